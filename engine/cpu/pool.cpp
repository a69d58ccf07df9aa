// CPU kernels of max pooling (ops.h max_pool2d). A tensor is viewed as [N, C/B, H, W, B], B = the channel
// block when blocked (8 or 16), else 1: plane p = n * (C/B) + cb holds H x W rows of B values, the B channels
// sharing every window, so that the loops over a window's values run across the block's channels (vectorized).
// The forward threads over output rows, the backward over planes, each adding its outputs' gradients in
// row-major order (the CUDA kernel's order: the same sums on both).
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "engine/cpu/channel_block.h"
#include "engine/kernels.h"
#include "engine/scalar_math.h"

namespace engine::cpu {

namespace {

bool parallel(const PoolShape& s) { return s.n * s.c * s.oh * s.ow * s.kernel * s.kernel > 32768; }

template <int B>
void forward(const PoolShape& s, const float* x, float* y, int32_t* indices) {
  const int64_t planes = s.n * (s.c / B);
#pragma omp parallel for schedule(static) if (parallel(s))
  for (int64_t row = 0; row < planes * s.oh; row++) {
    const int64_t p = row / s.oh, oi = row % s.oh;
    const float* xp = x + p * s.h * s.w * B;
    const PoolWindow wi = pool_window(oi, s.h, s.kernel, s.stride, s.padding);
    for (int64_t oj = 0; oj < s.ow; oj++) {
      const PoolWindow wj = pool_window(oj, s.w, s.kernel, s.stride, s.padding);
      float m[B];
      int32_t at[B];
      for (int j = 0; j < B; j++) m[j] = -INFINITY, at[j] = (int32_t)(wi.lo * s.w + wj.lo);
      for (int64_t i = wi.lo; i < wi.hi; i++)
        for (int64_t k = wj.lo; k < wj.hi; k++) {
          const float* v = xp + (i * s.w + k) * B;
          const int32_t here = (int32_t)(i * s.w + k);
#pragma omp simd
          for (int j = 0; j < B; j++) {
            const bool takes = pool_takes(v[j], m[j]);
            m[j] = takes ? v[j] : m[j];
            at[j] = takes ? here : at[j];
          }
        }
      const int64_t e = (row * s.ow + oj) * B;  // (p, oi, oj) of y
      for (int j = 0; j < B; j++) y[e + j] = m[j];
      if (indices)
        for (int j = 0; j < B; j++) indices[e + j] = at[j];
    }
  }
}

template <int B>
void backward(const PoolShape& s, const int32_t* indices, const float* gy, float* gx) {
  const int64_t planes = s.n * (s.c / B), in = s.h * s.w * B, out = s.oh * s.ow * B;
#pragma omp parallel for schedule(static) if (parallel(s))
  for (int64_t p = 0; p < planes; p++) {
    float* gp = gx + p * in;
    const float* gyp = gy + p * out;
    const int32_t* ip = indices + p * out;
    std::fill_n(gp, in, 0.f);
    for (int64_t e = 0; e < s.oh * s.ow; e++)
      for (int j = 0; j < B; j++) gp[(int64_t)ip[e * B + j] * B + j] += gyp[e * B + j];
  }
}

}  // namespace

void max_pool_forward(const PoolShape& s, const float* x, float* y, int32_t* indices) {
  with_channel_block(s.block, "max_pool_forward", [&](auto b) { forward<decltype(b)::value>(s, x, y, indices); });
}

void max_pool_backward(const PoolShape& s, const int32_t* indices, const float* gy, float* gx) {
  with_channel_block(s.block, "max_pool_backward", [&](auto b) { backward<decltype(b)::value>(s, indices, gy, gx); });
}

}  // namespace engine::cpu
