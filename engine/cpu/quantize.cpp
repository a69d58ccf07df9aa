// CPU kernels of fake_quantize (ops.h): one pass each way, the per-element math in fake_quant_value.
#include <cmath>

#include "engine/kernels.h"
#include "engine/scalar_math.h"

namespace engine::cpu {

void fake_quant_forward(const FakeQuant& q, const float* x, const float* step, float* y) {
  const float z = (float)q.zero_point, lo = (float)q.q_min, hi = (float)q.q_max;
  for (int64_t r = 0; r < q.rows; r++) {
    const float s = step[r];
    const float* xr = x + r * q.per_row;
    float* yr = y + r * q.per_row;
#pragma omp parallel for simd schedule(static) if (q.per_row > 32768)
    for (int64_t i = 0; i < q.per_row; i++) yr[i] = fake_quant_value(xr[i], s, z, lo, hi);
  }
}

void fake_quant_backward(const FakeQuant& q, const float* x, const float* step, const float* gy, float* gx,
                         float* terms) {
  const float z = (float)q.zero_point, lo = (float)q.q_min, hi = (float)q.q_max;
  for (int64_t r = 0; r < q.rows; r++) {
    const float s = step[r];
    const int64_t o = r * q.per_row;
#pragma omp parallel for simd schedule(static) if (q.per_row > 32768)
    for (int64_t i = o; i < o + q.per_row; i++) fake_quant_grad(x[i], s, z, lo, hi, gy[i], gx[i], terms[i]);
  }
}

}  // namespace engine::cpu
