# repq engine: `make` installs the missing Debian packages (scripts/install-deps.sh build), then builds the engine, the tests and the programs (./train, ./ptq, ./inspect, ./summary, ./export, ./infer).
# `make test` installs missing Debian packages, builds and runs the suite. `make bench` runs the benchmarks.
# CUDA is built when nvcc and cuDNN are found; CUDA=0 forces it off. MPI (data-parallel training under
# mpirun, engine/dist.h) is built when mpicxx is found; MPI=0 forces it off. NCCL (the gradient all-reduce of
# `mpirun ... ./train --device cuda`, engine/cuda/nccl.h) is built when both are, and nccl.h is found; NCCL=0
# forces it off.
# `make test SANITIZE=1` builds the suite into build-san/ under AddressSanitizer and UndefinedBehaviorSanitizer
# and runs it. `make fuzz [FUZZ_SECONDS=N]` builds the libFuzzer targets (fuzz/*_fuzz.cpp) with clang into
# build-fuzz/ and runs each for N seconds (default 60).

# Parallel by default, one job per core; a -j on the command line wins, and sub-makes share the jobs.
ifeq ($(MAKELEVEL),0)
  MAKEFLAGS += -j$(shell nproc)
endif

CXX      ?= g++
CXXFLAGS ?= -O3 -march=native
B        := build
ifeq ($(SANITIZE),1)
  # -O1: the suite under the sanitizers in minutes. Every UB report is an error (no recovery).
  B        := build-san
  CXXFLAGS := -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined
  LDLIBS   += -fsanitize=address,undefined
  CUDA     := 0
  MPI      := 0
endif
CXXFLAGS += -std=c++20 -fopenmp -Wall -Wextra -Wno-unused-parameter -MMD -MP -I. -I/usr/include/stb
LDLIBS   += -ldnnl -lfmt -ljpeg -lpng16 -lpthread -fopenmp

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

# --- MPI detection: Open MPI's compiler wrapper gives the flags; the library is plain C (no mpi_cxx) ------
MPICXX    := $(shell which mpicxx 2>/dev/null)
MPI_FOUND := $(if $(MPICXX),1,0)
MPI ?= $(MPI_FOUND)
ifeq ($(MPI),1)
  CXXFLAGS += -DENGINE_MPI $(shell $(MPICXX) --showme:compile)
  LDLIBS   += $(filter-out -lmpi_cxx,$(shell $(MPICXX) --showme:link))
endif

LIB_DIRS := engine engine/cpu layers models deploy quant datasets trainer interop
LIB_SRC  := $(foreach d,$(LIB_DIRS),$(wildcard $(d)/*.cpp))
CU_SRC   :=
ifeq ($(CUDA),1)
  CU_SRC   := $(wildcard engine/cuda/*.cu)
  CXXFLAGS += -DENGINE_CUDA -I$(CUDA_HOME)/include
  LDLIBS   += -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcudnn -lcublas -lcudart
  NVFLAGS  := -O3 -std=c++20 -MMD -MP -I. -DENGINE_CUDA -Xcompiler -fopenmp \
              -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90
endif

# --- NCCL: with the CUDA toolkit here; needs MPI too, which carries its bootstrap (the unique id) ------------
NCCL_H := $(firstword $(wildcard $(CUDA_HOME)/include/nccl.h /usr/include/nccl.h))
ifeq ($(CUDA)$(MPI),11)
  NCCL ?= $(if $(NCCL_H),1,0)
else
  NCCL := 0
endif
ifeq ($(NCCL),1)
  CXXFLAGS += -DENGINE_NCCL
  NVFLAGS  += -DENGINE_NCCL
  LDLIBS   += -lnccl
endif

LIB_OBJ  := $(LIB_SRC:%.cpp=$(B)/%.o) $(CU_SRC:%.cu=$(B)/%.cu.o)
TEST_OBJ := $(patsubst %.cpp,$(B)/%.o,$(wildcard tests/*.cpp))
# The programs: apps/NAME.cpp, each a thin main over the library, built as ./NAME in the root.
PROGRAMS := $(basename $(notdir $(wildcard apps/*.cpp)))
BENCH    := $(patsubst %.cpp,$(B)/%,$(wildcard bench/*.cpp))

# The default goal: the Debian packages first (a fresh machine has none), then `all` in a sub-make, which
# finds what they installed (nvcc, mpicxx, nccl.h are looked for when a make starts).
build: deps-build
	@$(MAKE) --no-print-directory all

all: $(B)/.found $(PROGRAMS) $(B)/run_tests

$(B)/.found:
	@mkdir -p $(B)
	@echo "nvcc:  $(if $(NVCC),✓ $(NVCC),✗ not found)"
	@echo "cuDNN: $(if $(CUDNN_H),✓ $(CUDNN_H),✗ not found)"
	@echo "CUDA backend: $(if $(filter 1,$(CUDA)),built,off)"
	@echo "mpicxx: $(if $(MPICXX),✓ $(MPICXX),✗ not found)"
	@echo "MPI (mpirun -np N ./train): $(if $(filter 1,$(MPI)),built,off)"
	@echo "nccl.h: $(if $(NCCL_H),✓ $(NCCL_H),✗ not found)"
	@echo "NCCL (mpirun -np N ./train --device cuda): $(if $(filter 1,$(NCCL)),built,off$(if $(filter 11,$(CUDA)$(MPI)),, (needs the CUDA backend and MPI)))"
	@touch $@

$(B)/libengine.a: $(LIB_OBJ)
	@mkdir -p $(dir $@)
	rm -f $@
	ar rcs $@ $^

# Every object depends on the CUDA, MPI and NCCL settings, so switching CUDA=0/1, MPI=0/1 or NCCL=0/1 rebuilds
# instead of mixing objects. NCCL is named only when it is off with CUDA and MPI on (NCCL=0, or no nccl.h), so
# that the builds made before NCCL existed stay valid.
SETTING := CUDA=$(CUDA) MPI=$(MPI)$(if $(filter 110,$(CUDA)$(MPI)$(NCCL)), NCCL=0,)
$(B)/cuda.setting: FORCE
	@mkdir -p $(B)
	@echo "$(SETTING)" | cmp -s - $@ || echo "$(SETTING)" > $@

$(B)/%.o: %.cpp $(B)/cuda.setting
	@mkdir -p $(dir $@)
	$(CXX) $(CXXFLAGS) -c $< -o $@

$(B)/%.cu.o: %.cu $(B)/cuda.setting
	@mkdir -p $(dir $@)
	$(NVCC) $(NVFLAGS) -c $< -o $@

define program_rule
$(1): $(B)/apps/$(1).o $(B)/libengine.a
	$$(CXX) $$(CXXFLAGS) $$< $(B)/libengine.a -o $$@ $$(LDLIBS)
endef
$(foreach p,$(PROGRAMS),$(eval $(call program_rule,$(p))))

$(B)/run_tests: $(TEST_OBJ) $(B)/libengine.a
	$(CXX) $(CXXFLAGS) $(TEST_OBJ) $(B)/libengine.a -o $@ $(LDLIBS)

$(B)/bench/%: bench/%.cpp $(B)/libengine.a
	@mkdir -p $(dir $@)
	$(CXX) $(CXXFLAGS) $< $(B)/libengine.a -o $@ $(LDLIBS)

# The experiments of dev/, each a program on its own (dev/conv_algorithms.cpp: oneDNN alone;
# dev/winograd.cpp: our Winograd kernels against oneDNN's direct ones).
dev: $(patsubst %.cpp,$(B)/%,$(wildcard dev/*.cpp))
$(B)/dev/%: dev/%.cpp $(B)/libengine.a
	@mkdir -p $(dir $@)
	$(CXX) $(CXXFLAGS) $< $(B)/libengine.a -o $@ $(LDLIBS)

deps:
	@bash scripts/install-deps.sh

deps-build:
	@bash scripts/install-deps.sh build

ifeq ($(SANITIZE),1)
# The suite alone (the programs stay the normal build's), every report fatal; see docs/hardening.md.
test: deps
	@$(MAKE) --no-print-directory $(B)/.found $(B)/run_tests
	$(SAN_ENV) ./$(B)/run_tests $(TEST_ARGS)
else
test: deps
	@$(MAKE) --no-print-directory all
	./$(B)/run_tests $(TEST_ARGS)
endif
SAN_ENV := ASAN_OPTIONS=detect_leaks=1:halt_on_error=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

# --- fuzzing: clang and libFuzzer, the library instrumented in build-fuzz/ ----------------------------
FUZZ_SECONDS ?= 60
# libFuzzer's seed: 0 picks one at random (new inputs each run); and a cap on the inputs (-1: none). CI
# gives a fixed seed and cap, so that its fuzzing tries the same inputs on every run and a submission fails
# on what it changed, not on the draw (docs/hardening.md).
FUZZ_SEED    ?= 0
FUZZ_RUNS    ?= -1
FUZZ_CXX     := clang++
FUZZ_FLAGS   := -O1 -g -std=c++20 -fopenmp -fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined \
                -MMD -MP -I. -I/usr/include/stb
FUZZERS      := $(patsubst fuzz/%_fuzz.cpp,%,$(wildcard fuzz/*_fuzz.cpp))

build-fuzz/%.o: %.cpp
	@mkdir -p $(dir $@)
	$(FUZZ_CXX) $(FUZZ_FLAGS) -c $< -o $@

build-fuzz/libengine.a: $(LIB_SRC:%.cpp=build-fuzz/%.o)
	rm -f $@
	ar rcs $@ $^

build-fuzz/%_fuzz: build-fuzz/fuzz/%_fuzz.o build-fuzz/libengine.a
	$(FUZZ_CXX) $(FUZZ_FLAGS) -fsanitize=fuzzer $^ -o $@ -ldnnl -lfmt -ljpeg -lpng16 -lpthread

# Remakes the committed seeds, fuzz/corpus/*, from ../shared/data (the normal build's library).
fuzz-seeds: build/libengine.a
	$(CXX) $(CXXFLAGS) fuzz/make_seeds.cpp build/libengine.a -o build/make_seeds $(LDLIBS)
	./build/make_seeds

# Remakes tests/reference/qdq_cifar_w8.safetensors, the QDQ export tests' trained model (~3 minutes).
qdq-reference: build/libengine.a
	$(CXX) $(CXXFLAGS) tests/reference/make_qdq_model.cpp build/libengine.a -o build/make_qdq_model $(LDLIBS)
	OMP_WAIT_POLICY=passive ./build/make_qdq_model

fuzz-deps:
	@bash scripts/install-deps.sh fuzz

# Each target from its seeds (fuzz/corpus/T) and what earlier runs found (build-fuzz/corpus/T); a crash
# is written to build-fuzz/crashes/T-*: add it to fuzz/regressions/T/, which the suite replays.
fuzz: fuzz-deps
	@$(MAKE) --no-print-directory $(FUZZERS:%=build-fuzz/%_fuzz)
	@rc=0; for t in $(FUZZERS); do \
	  mkdir -p build-fuzz/corpus/$$t build-fuzz/crashes; \
	  echo "fuzz: $$t for $(FUZZ_SECONDS) s at most, seed $(FUZZ_SEED), inputs $(FUZZ_RUNS) (-1: no cap)"; \
	  ./build-fuzz/$${t}_fuzz -max_total_time=$(FUZZ_SECONDS) -runs=$(FUZZ_RUNS) -seed=$(FUZZ_SEED) -max_len=65536 -rss_limit_mb=4096 \
	    -print_final_stats=1 -artifact_prefix=build-fuzz/crashes/$$t- build-fuzz/corpus/$$t fuzz/corpus/$$t 2>build-fuzz/$$t.log \
	    || { rc=1; echo "fuzz: $$t FAILED, see build-fuzz/$$t.log"; }; \
	  grep -E '^stat::(number_of_executed_units|new_units_added)' build-fuzz/$$t.log | tr '\n' ' '; echo; \
	done; exit $$rc

bench: deps
	@$(MAKE) --no-print-directory all $(BENCH)
	bash bench/run.sh

# The modern peers for `make bench` (PyPI's torch 2, onnxruntime, OpenVINO) in build/peers-venv, made once
# (bench/peers.sh). Nothing else depends on it: `make bench` falls back to Debian's torch without it.
bench-peers:
	@bash bench/peers.sh

# Data-parallel throughput: mpirun -np 2 against 1 process (bench/dist.sh).
bench-dist: deps
	@$(MAKE) --no-print-directory all
	bash bench/dist.sh

clean:
	rm -rf build build-san build-fuzz $(PROGRAMS)

.PHONY: build all dev deps deps-build test bench bench-peers bench-dist clean fuzz fuzz-deps fuzz-seeds qdq-reference FORCE
FORCE:
-include $(shell find $(B) build-fuzz -name '*.d' 2>/dev/null)
