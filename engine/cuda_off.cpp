// Stand-ins for the CUDA backend when the engine is built without it (CUDA=0, or no nvcc/cuDNN).
#ifndef ENGINE_CUDA
#include "engine/cuda/cuda_backend.h"
#include "engine/kernels.h"

namespace engine::cuda {

bool built() { return false; }
bool available() { return false; }
std::string unavailable_reason() {
  return "this build has no CUDA backend (nvcc or cuDNN was not found, or CUDA=0); rebuild with `make CUDA=1`";
}
void require() { fail(unavailable_reason()); }
int device_count() { return 0; }
void select_device(int, int) {}
void* alloc(size_t) { require(); return nullptr; }
void free(void*, size_t) { require(); }
AllocStats alloc_stats() { return {}; }
void release_cached_memory() {}
void copy_to_device(void*, const void*, size_t) { require(); }
void copy_to_host(void*, const void*, size_t) { require(); }
void copy_on_device(void*, const void*, size_t) { require(); }
void synchronize() {}
void qconv_forward(const QConvSpec&, const uint8_t*, const int8_t*, const int32_t*, void*) { require(); }

}  // namespace engine::cuda
#endif
