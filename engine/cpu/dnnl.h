// oneDNN on the CPU: the engine and stream, a cache of primitives keyed by shape, and scratch buffers
// reused across calls. Our tensors keep their plain layouts (NCHW, OIHW, row-major) at the API boundary;
// where a primitive runs faster in one of oneDNN's blocked layouts, its cached call reorders the inputs
// into scratch buffers before it and the outputs back after it.
// The cache and the scratch buffers belong to the calling thread (thread_local).
#pragma once
#include <oneapi/dnnl/dnnl.hpp>

#include <array>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <unordered_map>
#include <vector>

#include "engine/tensor.h"

namespace engine::cpu {

// oneDNN primitives (convolutions, inner products, reorders) created so far, on all threads. A training
// step that repeats the shapes of an earlier one creates none: tests and benchmarks check this.
uint64_t dnnl_primitives_created();

dnnl::engine& dnnl_engine();

// The instruction set oneDNN dispatches to on this CPU (dnnl::get_effective_cpu_isa(), which
// ONEDNN_MAX_CPU_ISA caps): "avx2", "avx512_core_amx", ...
std::string dnnl_isa();
// Whether its int8 kernels multiply with VNNI (vpdpbusd: exact s32 sums of u8 x s8); without it they use
// vpmaddubsw, whose s16 pair sums saturate (docs/int8.md).
bool dnnl_has_vnni();

// Every primitive made so far: its kind and implementation ("convolution jit:avx2", "reorder jit:uni").
// The first reference implementation ("ref:any", oneDNN's slow fallback) is reported once on stderr, in
// words: the layouts asked for have no fast kernel on this CPU.
std::vector<std::string> dnnl_implementations();
// Notes a primitive made outside DnnlCall (the int8 convolution and its weight reorder).
void dnnl_note(const dnnl::primitive_desc_base& pd);
// Empties this thread's cache of calls and the list of implementations, so that what runs next makes its
// primitives anew and lists them (tests).
void dnnl_forget();

// Primitive attributes for cached calls: the scratchpad is ours (shared and reused), not per call.
dnnl::primitive_attr dnnl_attr();

// One argument of a call, as our buffer holds it.
struct DnnlArg {
  int arg;                    // DNNL_ARG_SRC, DNNL_ARG_DIFF_WEIGHTS, ...
  dnnl::memory::desc plain;   // our layout
  bool output;
};

// A primitive bound to buffers in our layouts, with the reorders around it that its layouts need.
// Built once per shape; running it creates nothing, and allocates only to grow a shared scratch buffer.
class DnnlCall {
 public:
  DnnlCall(const dnnl::primitive_desc& pd, const std::vector<DnnlArg>& args);
  // Runs on the buffers given in the order of `args` at construction, and waits for the result. With
  // frozen_weights (the DNNL_ARG_WEIGHTS buffer's storage, frozen: Tensor::freeze_), weights that the
  // primitive wants in another layout are reordered once into a form kept with that storage (frozen.h),
  // not on every call.
  void run(std::initializer_list<const void*> buffers, Storage* frozen_weights = nullptr);

 private:
  struct Step {
    dnnl::primitive prim;
    std::unordered_map<int, dnnl::memory> args;
    bool serial = false;  // run on one thread (small reorders)
  };
  struct Scratch {
    dnnl::memory mem;
    int slot;  // which shared scratch buffer holds it
  };
  void add_scratchpad(Step& step, const dnnl::memory::desc& md);
  std::vector<Step> steps_;          // reorders into the primitive's layouts, the primitive, reorders back
  std::vector<dnnl::memory> user_;   // our buffers (handles set on each run)
  std::vector<Scratch> scratch_;     // blocked copies and scratchpads (handles set on each run)
  int weights_reorder_ = -1;         // the step reordering DNNL_ARG_WEIGHTS, and scratch_'s entry for its
  int weights_copy_ = -1;            //   copy (-1: the weights are taken as they are)
};

// The call cached under `key` (an op tag and its shape, zero-filled), made by make() on first use.
using DnnlKey = std::array<int64_t, 16>;
DnnlCall* dnnl_find(const DnnlKey& key);
DnnlCall& dnnl_insert(const DnnlKey& key, DnnlCall call);
template <class Make>
DnnlCall& dnnl_call(const DnnlKey& key, Make make) {
  if (DnnlCall* call = dnnl_find(key)) return *call;
  return dnnl_insert(key, make());
}

}  // namespace engine::cpu
