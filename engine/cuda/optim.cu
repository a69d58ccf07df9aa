// The SGD step on CUDA (the CPU one: engine/cpu/optim.cpp; the arithmetic, shared: engine/scalar_math.h).
#include "engine/cuda/common.cuh"
#include "engine/scalar_math.h"

namespace engine::cuda {

__global__ void sgd_update_kernel(float* p, const float* g, float* buf, int64_t n, float lr, float momentum,
                                  float wd, bool nesterov, bool first, bool positive) {
  GRID_STRIDE(i, n) sgd_step(p[i], g[i], buf ? buf + i : nullptr, lr, momentum, wd, nesterov, first, positive);
}

// p, g [n]; buf [n] or null (no momentum).
void sgd_update(float* p, const float* g, float* buf, int64_t n, float lr, float momentum, float wd, bool nesterov,
                bool first, bool positive) {
  if (n > 0)
    LAUNCH(sgd_update_kernel, blocks_for(n), kThreads, p, g, buf, n, lr, momentum, wd, nesterov, first, positive);
}

}  // namespace engine::cuda
