// CPU kernels for sums over a contiguous run of dims: x viewed as [outer, mid, inner] -> y [outer, inner].
// Accumulates in double, in a fixed order, so results do not depend on the thread count.
#include <algorithm>

#include "engine/kernels.h"

namespace engine::cpu {

void reduce_sum(const Reduce3& r, const float* x, float* y) {
  if (r.inner == 1) {
#pragma omp parallel for schedule(static) if (r.outer * r.mid > 32768)
    for (int64_t o = 0; o < r.outer; o++) {
      const float* p = x + o * r.mid;
      double acc = 0;
#pragma omp simd reduction(+ : acc)
      for (int64_t m = 0; m < r.mid; m++) acc += p[m];
      y[o] = (float)acc;
    }
    return;
  }
  constexpr int64_t block = 256;
  int64_t blocks = (r.inner + block - 1) / block;
#pragma omp parallel for schedule(static) if (r.outer * r.mid * r.inner > 32768)
  for (int64_t ob = 0; ob < r.outer * blocks; ob++) {
    int64_t o = ob / blocks, i0 = ob % blocks * block, len = std::min(block, r.inner - i0);
    double acc[block] = {};
    for (int64_t m = 0; m < r.mid; m++) {
      const float* p = x + (o * r.mid + m) * r.inner + i0;
      for (int64_t i = 0; i < len; i++) acc[i] += p[i];
    }
    for (int64_t i = 0; i < len; i++) y[o * r.inner + i0 + i] = (float)acc[i];
  }
}

void reduce_sum_backward(const Reduce3& r, const float* gy, float* gx, float s) {
#pragma omp parallel for schedule(static) if (r.outer * r.mid * r.inner > 32768)
  for (int64_t om = 0; om < r.outer * r.mid; om++) {
    const float* g = gy + om / r.mid * r.inner;
    float* out = gx + om * r.inner;
    for (int64_t i = 0; i < r.inner; i++) out[i] = g[i] * s;
  }
}

}  // namespace engine::cpu
