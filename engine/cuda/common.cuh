// Shared by the CUDA kernel files (not a public header): error-checking macros, the one stream and the
// library handles, launch geometry, temporary device buffers and a deterministic block reduction.
#pragma once
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cudnn.h>

#include <cstdint>
#include <string>

#include "engine/cuda/cuda_backend.h"
#include "engine/kernels.h"

namespace engine::cuda {

// Throws std::runtime_error "file:line: what: message".
[[noreturn]] void throw_error(const char* file, int line, const char* what, const std::string& message);

#define CUDA_CHECK(expr)                                                                 \
  do {                                                                                   \
    cudaError_t e_ = (expr);                                                             \
    if (e_ != cudaSuccess)                                                               \
      ::engine::cuda::throw_error(__FILE__, __LINE__, #expr, cudaGetErrorString(e_));    \
  } while (0)
#define CUDNN_CHECK(expr)                                                                \
  do {                                                                                   \
    cudnnStatus_t s_ = (expr);                                                           \
    if (s_ != CUDNN_STATUS_SUCCESS)                                                      \
      ::engine::cuda::throw_error(__FILE__, __LINE__, #expr, cudnnGetErrorString(s_));   \
  } while (0)
#define CUBLAS_CHECK(expr)                                                               \
  do {                                                                                   \
    cublasStatus_t s_ = (expr);                                                          \
    if (s_ != CUBLAS_STATUS_SUCCESS)                                                     \
      ::engine::cuda::throw_error(__FILE__, __LINE__, #expr, cublasGetStatusString(s_)); \
  } while (0)

// Launches a kernel on the engine's stream and checks the launch (bad geometry, no kernel image for this
// GPU). Errors inside the kernel surface at the next checked call, with that call's file and line.
#define LAUNCH(kernel, grid, block, ...)                                      \
  do {                                                                        \
    kernel<<<(grid), (block), 0, ::engine::cuda::stream()>>>(__VA_ARGS__);    \
    CUDA_CHECK(cudaGetLastError());                                           \
  } while (0)

// The one stream every kernel, copy and library call runs on, and the handles bound to it. Each calls
// require() first, so they fail with the reason when there is no usable GPU.
cudaStream_t stream();
cudnnHandle_t cudnn();
cublasHandle_t cublas();

constexpr int kThreads = 256;

// Blocks for a grid-stride loop over n elements (n > 0).
inline unsigned blocks_for(int64_t n, int threads = kThreads) {
  int64_t b = (n + threads - 1) / threads;
  return (unsigned)(b < 65535 * 32 ? b : 65535 * 32);
}

#define GRID_STRIDE(i, n) \
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < (n); i += (int64_t)gridDim.x * blockDim.x)

// Device memory for a kernel's scratch, from the caching allocator, returned when it goes out of scope.
// Safe to hand back right after the launches that use it: every later user runs on the same stream.
struct DeviceBuffer {
  void* ptr = nullptr;
  size_t bytes = 0;
  explicit DeviceBuffer(size_t n) : ptr(n ? alloc(n) : nullptr), bytes(n) {}
  ~DeviceBuffer() { if (ptr) free(ptr, bytes); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  template <class T> T* as() const { return static_cast<T*>(ptr); }
};

// y[n, c, i] += b[c] for y [N, C, HW] (conv.cu; linear.cu uses it with HW = 1).
void add_channel_bias(float* y, const float* b, int64_t n, int64_t c, int64_t hw);

// Sum of each thread's v over the block, in a fixed order (so the result is deterministic): returned
// to every thread. `shared` holds blockDim.x values; blockDim.x is a power of two.
template <class T>
__device__ T block_sum(T v, T* shared) {
  shared[threadIdx.x] = v;
  __syncthreads();
  for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) shared[threadIdx.x] += shared[threadIdx.x + s];
    __syncthreads();
  }
  T r = shared[0];
  __syncthreads();  // shared may be reused right after
  return r;
}

// --- per-channel work on x [N, C, HW] (batch norm, the fused BN sum) -----------------------------------

// Calls f(flat index) for the values of channel c that this thread owns: e = t, t + B, t + 2B, ... of the
// channel's M = N * HW values, value e being x[n = e / HW, c, j = e % HW]; n and j are stepped, not divided.
// With one block per channel and block_sum after, per-channel sums are deterministic.
template <class F>
__device__ void for_channel(int64_t n_total, int64_t channels, int64_t hw, int64_t c, F f) {
  const int64_t dn = blockDim.x / hw, dj = blockDim.x % hw;
  int64_t n = threadIdx.x / hw, j = threadIdx.x % hw;
  while (n < n_total) {
    f((n * channels + c) * hw + j);
    n += dn;
    j += dj;
    if (j >= hw) {
      j -= hw;
      n++;
    }
  }
}

// batchnorm.cu, for fused.cu too: the training statistics of x (batch mean and biased var, the running
// update) with scale = gamma / sqrt(var + eps); and scale alone from a given var.
void bn_statistics(const BnShape& s, const float* x, const float* gamma, float* running_mean, float* running_var,
                   float momentum, float eps, float* mean, float* var, float* scale);
void bn_scale(int64_t c, const float* gamma, const float* var, float eps, float* scale);

// f(channel of i, i) for every element i of [N, C, HW]; I is the index type (32-bit where it fits, as
// 64-bit division is slow on a GPU).
template <class I, class F>
__global__ void channel_map_kernel(I total, I c, I hw, F f) {
  GRID_STRIDE(i, total) f((I)i / hw % c, i);
}

template <class F>
void channel_map(int64_t n, int64_t c, int64_t hw, F f) {
  const int64_t total = n * c * hw;
  if (total == 0) return;
  if (total <= (int64_t)UINT32_MAX) {
    auto kernel = channel_map_kernel<uint32_t, F>;
    LAUNCH(kernel, blocks_for(total), kThreads, (uint32_t)total, (uint32_t)c, (uint32_t)hw, f);
  } else {
    auto kernel = channel_map_kernel<uint64_t, F>;
    LAUNCH(kernel, blocks_for(total), kThreads, (uint64_t)total, (uint64_t)c, (uint64_t)hw, f);
  }
}

}  // namespace engine::cuda
