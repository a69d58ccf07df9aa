// CUDA kernels for sums over a contiguous run of dims: x viewed as [outer, mid, inner] -> y [outer, inner]
// (the CPU ones: engine/cpu/reduce.cpp). Accumulates in double; each output is summed by a fixed set of
// threads in a fixed order, without atomics, so results are the same on every run.
#include <algorithm>

#include "engine/cuda/common.cuh"

namespace engine::cuda {

// Short sums (mid small): one thread per output, along mid.
__global__ void reduce_short_kernel(const float* x, float* y, int64_t outer, int64_t mid, int64_t inner) {
  GRID_STRIDE(k, outer * inner) {
    const int64_t o = k / inner, i = k % inner;
    const float* p = x + o * mid * inner + i;
    double acc = 0;
    for (int64_t m = 0; m < mid; m++) acc += p[m * inner];
    y[k] = (float)acc;
  }
}

// inner == 1: one block per row of mid contiguous values, then a tree over the block's threads.
__global__ void reduce_rows_kernel(const float* x, float* y, int64_t outer, int64_t mid) {
  __shared__ double shared[kThreads];
  for (int64_t o = blockIdx.x; o < outer; o += gridDim.x) {
    const float* p = x + o * mid;
    double acc = 0;
    for (int64_t m = threadIdx.x; m < mid; m += blockDim.x) acc += p[m];
    acc = block_sum(acc, shared);
    if (threadIdx.x == 0) y[o] = (float)acc;
  }
}

// inner > 1: a block of 32 x 8 threads per 32 outputs of one row; threadIdx.x runs along inner (coalesced
// loads), threadIdx.y along mid; then a tree over the 8.
constexpr int kColsX = 32, kColsY = 8;
__global__ void reduce_cols_kernel(const float* x, float* y, int64_t outer, int64_t mid, int64_t inner) {
  __shared__ double shared[kColsY][kColsX + 1];
  const int64_t i = blockIdx.x * (int64_t)kColsX + threadIdx.x;
  for (int64_t o = blockIdx.y; o < outer; o += gridDim.y) {
    double acc = 0;
    if (i < inner)
      for (int64_t m = threadIdx.y; m < mid; m += kColsY) acc += x[(o * mid + m) * inner + i];
    shared[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    for (int s = kColsY / 2; s > 0; s >>= 1) {
      if (threadIdx.y < s) shared[threadIdx.y][threadIdx.x] += shared[threadIdx.y + s][threadIdx.x];
      __syncthreads();
    }
    if (threadIdx.y == 0 && i < inner) y[o * inner + i] = (float)shared[0][threadIdx.x];
    __syncthreads();
  }
}

void reduce_sum(const Reduce3& r, const float* x, float* y) {
  if (r.outer * r.inner == 0) return;
  if (r.mid <= 16) {
    LAUNCH(reduce_short_kernel, blocks_for(r.outer * r.inner), kThreads, x, y, r.outer, r.mid, r.inner);
  } else if (r.inner == 1) {
    LAUNCH(reduce_rows_kernel, (unsigned)std::min<int64_t>(r.outer, 1 << 20), kThreads, x, y, r.outer, r.mid);
  } else {
    dim3 grid((unsigned)((r.inner + kColsX - 1) / kColsX), (unsigned)std::min<int64_t>(r.outer, 65535));
    LAUNCH(reduce_cols_kernel, grid, dim3(kColsX, kColsY), x, y, r.outer, r.mid, r.inner);
  }
}

// gx[outer, mid, inner] = gy[outer, inner] * s
__global__ void reduce_sum_backward_kernel(int64_t mid, int64_t inner, int64_t n, const float* gy, float* gx,
                                           float s) {
  GRID_STRIDE(k, n) gx[k] = gy[k / (mid * inner) * inner + k % inner] * s;
}

void reduce_sum_backward(const Reduce3& r, const float* gy, float* gx, float s) {
  const int64_t n = r.outer * r.mid * r.inner;
  if (n > 0) LAUNCH(reduce_sum_backward_kernel, blocks_for(n), kThreads, r.mid, r.inner, n, gy, gx, s);
}

}  // namespace engine::cuda
