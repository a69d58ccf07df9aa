// What the CPU kernels derive from a frozen tensor's values (Tensor::freeze_) and keep with its storage
// (Storage::derived): its copies in other layouts, each made once, on the first call that wants it, and
// freed with the storage. A frozen convolution weight is reordered into oneDNN's layout once (dnnl.h
// DnnlCall::run), or transformed into our Winograd's kernels once (winograd.h), instead of on every call:
// at batch 1 those per-call copies were a sixth of RepVGG-A0's forward (docs/performance.md).
#pragma once
#include <oneapi/dnnl/dnnl.hpp>

#include <array>
#include <cstdint>

#include "engine/tensor.h"

namespace engine::cpu {

// What a form is: `layout` for a oneDNN layout (empty for ours), `tag` for ours (its kind and parameters;
// zeros for oneDNN's).
struct FormKey {
  std::array<int64_t, 4> tag{};
  dnnl::memory::desc layout;
};

// The form of s under `key`, `bytes` long (64-byte aligned): found, or made by make(buffer) first.
// Thread-safe: two threads may run one frozen model.
void* derived_form(Storage& s, const FormKey& key, size_t bytes, void (*make)(void* buffer, const void* arg),
                   const void* arg);
template <class Make>
void* derived_form(Storage& s, const FormKey& key, size_t bytes, const Make& make) {
  auto call = [](void* buffer, const void* m) { (*static_cast<const Make*>(m))(buffer); };
  return derived_form(s, key, bytes, call, &make);
}
// How many forms s holds (tests).
int derived_forms(const Storage& s);

}  // namespace engine::cpu
