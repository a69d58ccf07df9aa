// CUDA kernels of fake_quantize (ops.h; the CPU ones: engine/cpu/quantize.cpp), the per-element math
// shared through engine/scalar_math.h.
#include "engine/cuda/common.cuh"
#include "engine/scalar_math.h"

namespace engine::cuda {

__global__ void fake_quant_forward_kernel(FakeQuant q, const float* x, const float* step, float* y) {
  GRID_STRIDE(i, q.rows * q.per_row) y[i] = fake_quant_value(x[i], step[i / q.per_row], q.zero_point, q.q_min, q.q_max);
}

void fake_quant_forward(const FakeQuant& q, const float* x, const float* step, float* y) {
  const int64_t n = q.rows * q.per_row;
  if (n > 0) LAUNCH(fake_quant_forward_kernel, blocks_for(n), kThreads, q, x, step, y);
}

__global__ void fake_quant_backward_kernel(FakeQuant q, const float* x, const float* step, const float* gy, float* gx,
                                           float* terms) {
  GRID_STRIDE(i, q.rows * q.per_row)
  fake_quant_grad(x[i], step[i / q.per_row], q.zero_point, q.q_min, q.q_max, gy[i], gx[i], terms[i]);
}

void fake_quant_backward(const FakeQuant& q, const float* x, const float* step, const float* gy, float* gx,
                         float* terms) {
  const int64_t n = q.rows * q.per_row;
  if (n > 0) LAUNCH(fake_quant_backward_kernel, blocks_for(n), kThreads, q, x, step, gy, gx, terms);
}

}  // namespace engine::cuda
