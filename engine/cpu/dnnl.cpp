// oneDNN context: engine, per-thread stream, primitive cache and shared scratch buffers (see dnnl.h).
#include "engine/cpu/dnnl.h"

#include <oneapi/dnnl/dnnl_debug.h>
#include <omp.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <set>

#include "engine/cpu/frozen.h"
#include "engine/tensor.h"

namespace engine::cpu {

static std::atomic<uint64_t> g_primitives_created{0};

// Reorders of fewer bytes than this run on one thread (see DnnlCall::run).
constexpr size_t kSerialReorderBytes = 1 << 20;

uint64_t dnnl_primitives_created() { return g_primitives_created.load(); }

dnnl::engine& dnnl_engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

std::string dnnl_isa() {
  switch (dnnl::get_effective_cpu_isa()) {
    case dnnl::cpu_isa::sse41: return "sse41";
    case dnnl::cpu_isa::avx: return "avx";
    case dnnl::cpu_isa::avx2: return "avx2";
    case dnnl::cpu_isa::avx2_vnni: return "avx2_vnni";
    case dnnl::cpu_isa::avx512_mic: return "avx512_mic";
    case dnnl::cpu_isa::avx512_mic_4ops: return "avx512_mic_4ops";
    case dnnl::cpu_isa::avx512_core: return "avx512_core";
    case dnnl::cpu_isa::avx512_core_vnni: return "avx512_core_vnni";
    case dnnl::cpu_isa::avx512_core_bf16: return "avx512_core_bf16";
    case dnnl::cpu_isa::avx512_core_amx: return "avx512_core_amx";
    default: return "no x86 JIT (oneDNN's reference kernels only)";
  }
}

bool dnnl_has_vnni() {
  const unsigned isa = (unsigned)dnnl::get_effective_cpu_isa();
  const unsigned vnni = (unsigned)dnnl_cpu_isa_avx512_core_vnni & ~(unsigned)dnnl_cpu_isa_avx512_core;
  const unsigned avx2_vnni = (unsigned)dnnl_cpu_isa_avx2_vnni & ~(unsigned)dnnl_cpu_isa_avx2;
  return (isa & vnni) || (isa & avx2_vnni);
}

namespace {
std::mutex g_impl_mutex;
std::set<std::string> g_impls;
}  // namespace

std::vector<std::string> dnnl_implementations() {
  std::lock_guard<std::mutex> lock(g_impl_mutex);
  return std::vector<std::string>(g_impls.begin(), g_impls.end());
}

void dnnl_note(const dnnl::primitive_desc_base& pd) {
  static bool warned = false;  // once a process
  const std::string impl = pd.impl_info_str();
  const std::string kind = dnnl_prim_kind2str((dnnl_primitive_kind_t)pd.get_kind());
  std::lock_guard<std::mutex> lock(g_impl_mutex);
  g_impls.insert(kind + " " + impl);
  const bool first_ref = impl.rfind("ref", 0) == 0 && !warned;
  warned |= first_ref;
  if (first_ref)
    std::fprintf(stderr,
                 "warning: oneDNN runs its reference %s kernel (%s) on this CPU (ISA %s): the layouts asked for have "
                 "no fast kernel here, and this will be slow; please report it\n",
                 kind.c_str(), impl.c_str(), dnnl_isa().c_str());
}

dnnl::primitive_attr dnnl_attr() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

namespace {

// A 64-byte aligned buffer that only grows.
struct Buffer {
  std::unique_ptr<void, decltype(&std::free)> data{nullptr, &std::free};
  size_t bytes = 0;
};

struct Context {
  dnnl::stream stream{dnnl_engine()};
  std::map<DnnlKey, DnnlCall> calls;
  // Slot 0 holds the scratchpads, slots 1.. the blocked copies of a call's arguments. Calls run one at a
  // time on this thread, so all of them share these.
  std::vector<Buffer> scratch;
};

Context& context() {
  thread_local Context c;
  return c;
}

void* scratch_buffer(int slot, size_t bytes) {
  auto& scratch = context().scratch;
  if ((int)scratch.size() <= slot) scratch.resize(slot + 1);
  Buffer& b = scratch[slot];
  if (b.bytes < bytes) {
    size_t rounded = (bytes + 63) / 64 * 64;
    b.data.reset(std::aligned_alloc(64, rounded));
    ENGINE_CHECK(b.data, "out of memory for " + std::to_string(rounded) + " bytes of oneDNN scratch");
    b.bytes = rounded;
  }
  return b.data.get();
}

}  // namespace

DnnlCall::DnnlCall(const dnnl::primitive_desc& pd, const std::vector<DnnlArg>& args) {
  const dnnl::engine& engine = dnnl_engine();
  dnnl_note(pd);
  Step main{dnnl::primitive(pd), {}};
  std::vector<Step> after;
  int blocked_slot = 1;
  for (const DnnlArg& a : args) {
    dnnl::memory user(a.plain, engine, nullptr);
    user_.push_back(user);
    dnnl::memory::desc want = pd.query_md(dnnl::query::exec_arg_md, a.arg);
    if (want == a.plain) {
      main.args[a.arg] = user;
      continue;
    }
    dnnl::memory blocked(want, engine, nullptr);
    if (a.arg == DNNL_ARG_WEIGHTS) {
      weights_reorder_ = (int)steps_.size();
      weights_copy_ = (int)scratch_.size();
    }
    scratch_.push_back({blocked, blocked_slot++});
    main.args[a.arg] = blocked;
    dnnl::memory from = a.output ? blocked : user, to = a.output ? user : blocked;
    dnnl::reorder::primitive_desc reorder_pd(from, to, dnnl_attr());
    dnnl_note(reorder_pd);
    Step reorder{dnnl::reorder(reorder_pd), {{DNNL_ARG_FROM, from}, {DNNL_ARG_TO, to}},
                 want.get_size() < kSerialReorderBytes};
    add_scratchpad(reorder, reorder_pd.scratchpad_desc());
    (a.output ? after : steps_).push_back(std::move(reorder));
  }
  add_scratchpad(main, pd.scratchpad_desc());
  steps_.push_back(std::move(main));
  steps_.insert(steps_.end(), after.begin(), after.end());
  g_primitives_created += steps_.size();
}

void DnnlCall::add_scratchpad(Step& step, const dnnl::memory::desc& md) {
  if (md.get_size() == 0) return;
  dnnl::memory mem(md, dnnl_engine(), nullptr);
  step.args[DNNL_ARG_SCRATCHPAD] = mem;
  scratch_.push_back({mem, 0});
}

void DnnlCall::run(std::initializer_list<const void*> buffers, Storage* frozen_weights) {
  ENGINE_CHECK(buffers.size() == user_.size(),
               std::to_string(buffers.size()) + " buffers for a call of " + std::to_string(user_.size()));
  const void* const* p = buffers.begin();
  for (dnnl::memory& m : user_) m.set_data_handle(const_cast<void*>(*p++));  // inputs are only read
  for (Scratch& s : scratch_) s.mem.set_data_handle(scratch_buffer(s.slot, s.mem.get_desc().get_size()));
  dnnl::stream& stream = context().stream;
  const Step* skip = nullptr;  // the weights' reorder, where they are frozen: its result is kept (made once)
  if (frozen_weights && weights_reorder_ >= 0) {
    Step& reorder = steps_[weights_reorder_];
    dnnl::memory& copy = scratch_[weights_copy_].mem;
    copy.set_data_handle(derived_form(*frozen_weights, {{}, copy.get_desc()}, copy.get_desc().get_size(),
                                      [&](void* buffer) {
                                        copy.set_data_handle(buffer);
                                        reorder.prim.execute(stream, reorder.args);
                                        stream.wait();
                                      }));
    skip = &reorder;
  }
  for (Step& s : steps_) {
    if (&s == skip) continue;
    if (s.serial) {
      // A small reorder (weights): one thread. On a busy machine with libgomp's default spin-waiting, a
      // parallel region waits for whichever thread was preempted: the ~150 weight reorders of a CIFAR
      // training step took 590 ms of its 2.9 s there, 19 ms on one thread. On a quiet machine both ways
      // measure the same (docs/performance.md).
      const int threads = omp_get_max_threads();
      omp_set_num_threads(1);
      s.prim.execute(stream, s.args);
      omp_set_num_threads(threads);
    } else {
      s.prim.execute(stream, s.args);
    }
  }
  stream.wait();
}

void dnnl_forget() {
  context().calls.clear();
  std::lock_guard<std::mutex> lock(g_impl_mutex);
  g_impls.clear();
}

DnnlCall* dnnl_find(const DnnlKey& key) {
  auto& calls = context().calls;
  auto it = calls.find(key);
  return it == calls.end() ? nullptr : &it->second;
}

DnnlCall& dnnl_insert(const DnnlKey& key, DnnlCall call) {
  return context().calls.insert_or_assign(key, std::move(call)).first->second;
}

}  // namespace engine::cpu
