#include "layers/oabn.h"

#include "engine/autograd.h"
#include "engine/ops.h"

namespace layers {

using engine::Tensor;

Tensor oabn_clip_gamma(const Tensor& gamma, const Tensor& running_var, float k) {
  ENGINE_CHECK(k > 0, "OABN bound factor k must be positive, got " + std::to_string(k));
  ENGINE_CHECK(gamma.shape() == running_var.shape(), "gamma " + gamma.str() + ", running_var " + running_var.str());
  Tensor step;  // sg(γ̂ − γ)
  {
    engine::NoGradGuard no_grad;
    // γ̂ − γ = relu(−b − γ) − relu(γ − b) with b = K·σ²: exactly 0 inside [−b, b], b − γ above, −b − γ below
    Tensor bound = engine::mul_scalar(running_var, k);
    step = engine::sub(engine::relu(engine::sub(engine::mul_scalar(bound, -1.0f), gamma)),
                       engine::relu(engine::sub(gamma, bound)));
  }
  return engine::add(gamma, step);
}

}  // namespace layers
