// Max pooling on CUDA (ops.h max_pool2d; the CPU kernels: engine/cpu/pool.cpp), x [N, C, H, W] plain (the
// blocked layout is the CPU's). The window's scan and argmax rule are scalar_math.h's, as on the CPU. The
// backward gathers instead of scattering: one thread per input element adds the gradients of the outputs whose
// windows hold it and whose argmax it is, in their row-major order, as the CPU adds them (no atomics: the
// same sums, deterministic).
#include "engine/cuda/common.cuh"
#include "engine/scalar_math.h"

namespace engine::cuda {

// One thread per output element k of y [planes, OH, OW].
__global__ void max_pool_forward_kernel(PoolShape s, int64_t total, const float* x, float* y, int32_t* indices) {
  GRID_STRIDE(k, total) {
    const int64_t oj = k % s.ow, oi = k / s.ow % s.oh, p = k / (s.ow * s.oh);
    const float* xp = x + p * s.h * s.w;
    const PoolWindow wi = pool_window(oi, s.h, s.kernel, s.stride, s.padding);
    const PoolWindow wj = pool_window(oj, s.w, s.kernel, s.stride, s.padding);
    float m = -INFINITY;
    int32_t at = (int32_t)(wi.lo * s.w + wj.lo);
    for (int64_t i = wi.lo; i < wi.hi; i++)
      for (int64_t j = wj.lo; j < wj.hi; j++) {
        const float v = xp[i * s.w + j];
        if (pool_takes(v, m)) {
          m = v;
          at = (int32_t)(i * s.w + j);
        }
      }
    y[k] = m;
    if (indices) indices[k] = at;
  }
}

void max_pool_forward(const PoolShape& s, const float* x, float* y, int32_t* indices) {
  ENGINE_CHECK(!s.block, "the blocked layout is the CPU's; on CUDA max_pool2d takes [N, C, H, W]");
  const int64_t total = s.n * s.c * s.oh * s.ow;
  if (total > 0) LAUNCH(max_pool_forward_kernel, blocks_for(total), kThreads, s, total, x, y, indices);
}

// The outputs along one dim whose windows hold input i: o * s − p <= i < o * s − p + k, within [0, out).
__device__ PoolWindow pool_outputs_of(int64_t i, int64_t out, int k, int s, int p) {
  const int64_t lo = i + p < k ? 0 : (i + p - k) / s + 1, hi = (i + p) / s + 1;
  return {lo, hi < out ? hi : out};
}

// One thread per input element k of gx [planes, H, W].
__global__ void max_pool_backward_kernel(PoolShape s, int64_t total, const int32_t* indices, const float* gy,
                                         float* gx) {
  GRID_STRIDE(k, total) {
    const int64_t j = k % s.w, i = k / s.w % s.h, p = k / (s.w * s.h);
    const PoolWindow oi = pool_outputs_of(i, s.oh, s.kernel, s.stride, s.padding);
    const PoolWindow oj = pool_outputs_of(j, s.ow, s.kernel, s.stride, s.padding);
    const int32_t here = (int32_t)(i * s.w + j);
    float g = 0.f;
    for (int64_t a = oi.lo; a < oi.hi; a++)
      for (int64_t b = oj.lo; b < oj.hi; b++) {
        const int64_t e = (p * s.oh + a) * s.ow + b;
        if (indices[e] == here) g += gy[e];
      }
    gx[k] = g;
  }
}

void max_pool_backward(const PoolShape& s, const int32_t* indices, const float* gy, float* gx) {
  ENGINE_CHECK(!s.block, "the blocked layout is the CPU's; on CUDA max_pool2d takes [N, C, H, W]");
  const int64_t total = s.n * s.c * s.h * s.w;
  if (total > 0) LAUNCH(max_pool_backward_kernel, blocks_for(total), kThreads, s, total, indices, gy, gx);
}

}  // namespace engine::cuda
