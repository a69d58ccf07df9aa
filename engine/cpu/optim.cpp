// CPU kernel of the SGD step (engine/optim.h), threaded with OpenMP (static schedule). The per-element
// update, sgd_step, is in engine/scalar_math.h, shared with engine/cuda/optim.cu.
#include "engine/kernels.h"
#include "engine/scalar_math.h"

namespace engine::cpu {

// p, g [n]; buf [n] or null (no momentum).
void sgd_update(float* p, const float* g, float* buf, int64_t n, float lr, float momentum, float wd,
                bool nesterov, bool first, bool positive) {
#pragma omp parallel for simd schedule(static) if (n > 32768)
  for (int64_t i = 0; i < n; i++) sgd_step(p[i], g[i], buf ? buf + i : nullptr, lr, momentum, wd, nesterov, first, positive);
}

}  // namespace engine::cpu
