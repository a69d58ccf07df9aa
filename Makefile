# repq engine: `make` builds the CPU engine, the tests and the programs (./train, ./ptq, ./inspect, ./summary, ./export).
# `make test` installs missing Debian packages, builds and runs the suite. `make bench` runs the benchmarks.
# CUDA is built when nvcc and cuDNN are found; CUDA=0 forces it off.

# Parallel by default, one job per core; a -j on the command line wins, and sub-makes share the jobs.
ifeq ($(MAKELEVEL),0)
  MAKEFLAGS += -j$(shell nproc)
endif

CXX      ?= g++
CXXFLAGS ?= -O3 -march=native
CXXFLAGS += -std=c++20 -fopenmp -Wall -Wextra -Wno-unused-parameter -MMD -MP -I. -I/usr/include/stb
LDLIBS   += -ldnnl -lfmt -lpthread -fopenmp

# --- CUDA detection ---------------------------------------------------------------------------------
NVCC       := $(shell which nvcc 2>/dev/null)
CUDA_HOME  := $(if $(NVCC),$(patsubst %/bin/nvcc,%,$(NVCC)),)
CUDNN_H    := $(firstword $(wildcard $(CUDA_HOME)/include/cudnn.h /usr/include/cudnn.h /usr/include/x86_64-linux-gnu/cudnn.h))
ifeq ($(NVCC),)
  CUDA_FOUND := 0
else ifeq ($(CUDNN_H),)
  CUDA_FOUND := 0
else
  CUDA_FOUND := 1
endif
CUDA ?= $(CUDA_FOUND)

LIB_DIRS := engine engine/cpu layers quant models datasets trainer interop
LIB_SRC  := $(filter-out %_main.cpp,$(foreach d,$(LIB_DIRS),$(wildcard $(d)/*.cpp)))
CU_SRC   :=
ifeq ($(CUDA),1)
  CU_SRC   := $(wildcard engine/cuda/*.cu)
  CXXFLAGS += -DENGINE_CUDA -I$(CUDA_HOME)/include
  LDLIBS   += -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcudnn -lcublas -lcudart
  NVFLAGS  := -O3 -std=c++20 -MMD -MP -I. -DENGINE_CUDA -Xcompiler -fopenmp \
              -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90
endif

LIB_OBJ  := $(LIB_SRC:%.cpp=build/%.o) $(CU_SRC:%.cu=build/%.cu.o)
TEST_OBJ := $(patsubst %.cpp,build/%.o,$(wildcard tests/*.cpp))
PROGRAMS := $(patsubst %_main.cpp,%,$(notdir $(foreach d,$(LIB_DIRS),$(wildcard $(d)/*_main.cpp))))
BENCH    := $(patsubst %.cpp,build/%,$(wildcard bench/*.cpp))

all: build/.found $(PROGRAMS) build/run_tests

build/.found:
	@mkdir -p build
	@echo "nvcc:  $(if $(NVCC),✓ $(NVCC),✗ not found)"
	@echo "cuDNN: $(if $(CUDNN_H),✓ $(CUDNN_H),✗ not found)"
	@echo "CUDA backend: $(if $(filter 1,$(CUDA)),built,off)"
	@touch $@

build/libengine.a: $(LIB_OBJ)
	@mkdir -p $(dir $@)
	rm -f $@
	ar rcs $@ $^

# Every object depends on the CUDA setting, so switching CUDA=0/1 rebuilds instead of mixing objects.
build/cuda.setting: FORCE
	@mkdir -p build
	@echo "$(CUDA)" | cmp -s - $@ || echo "$(CUDA)" > $@

build/%.o: %.cpp build/cuda.setting
	@mkdir -p $(dir $@)
	$(CXX) $(CXXFLAGS) -c $< -o $@

build/%.cu.o: %.cu build/cuda.setting
	@mkdir -p $(dir $@)
	$(NVCC) $(NVFLAGS) -c $< -o $@

define program_rule
$(1): $(patsubst %.cpp,build/%.o,$(filter %/$(1)_main.cpp,$(foreach d,$(LIB_DIRS),$(wildcard $(d)/*_main.cpp)))) build/libengine.a
	$$(CXX) $$(CXXFLAGS) $$< build/libengine.a -o $$@ $$(LDLIBS)
endef
$(foreach p,$(PROGRAMS),$(eval $(call program_rule,$(p))))

build/run_tests: $(TEST_OBJ) build/libengine.a
	$(CXX) $(CXXFLAGS) $(TEST_OBJ) build/libengine.a -o $@ $(LDLIBS)

build/bench/%: bench/%.cpp build/libengine.a
	@mkdir -p $(dir $@)
	$(CXX) $(CXXFLAGS) $< build/libengine.a -o $@ $(LDLIBS)

deps:
	@bash scripts/install-deps.sh

test: deps
	@$(MAKE) --no-print-directory all
	./build/run_tests $(TEST_ARGS)

bench: deps
	@$(MAKE) --no-print-directory all $(BENCH)
	bash bench/run.sh

clean:
	rm -rf build $(PROGRAMS)

.PHONY: all deps test bench clean FORCE
FORCE:
-include $(shell find build -name '*.d' 2>/dev/null)
