// Stochastic gradient descent with momentum, exactly as torch.optim.SGD (PyTorch 1.13) with dampening 0,
// over parameter groups that differ in weight decay (e.g. no decay on BN parameters and biases).
// For each parameter p with a gradient:
//   d = grad + wd p                              L2 weight decay of p's group, added to the gradient
//   buf = d on p's first step, else momentum buf + d     (only when momentum > 0: no buffer otherwise)
//   d = nesterov ? d + momentum buf : buf
//   p -= lr d
//   p = max(|p|, 1.19e-7)                        only in a group of positive parameters (below)
// The learning rate, momentum and nesterov are shared by all groups; a schedule sets the learning rate
// once per epoch with set_lr (schedule.h). A step runs one fused kernel per parameter (cpu::sgd_update,
// cuda::sgd_update) and allocates nothing once the momentum buffers exist (they are made on first use).
#pragma once
#include <vector>

#include "engine/tensor.h"

namespace engine {

struct ParamGroup {
  std::vector<Tensor> params;
  float weight_decay = 0.f;
  // Parameters that must stay positive (LSQ's steps) are reflected after each update, p = |p|, and raised to
  // float32's epsilon, 1.19e-7, where below (PyTorch's observers' least scale: a RepQ-BN run took a weight step
  // to 2e-11, and its bias's int32 code, b / (s_x s_w), overflowed). A quantizer with a symmetric grid is even
  // in its step, so the reflection leaves its function unchanged, where a clamp to a floor would collapse it.
  bool positive = false;
};

class SGD {
 public:
  SGD(std::vector<ParamGroup> groups, float lr, float momentum = 0.f, bool nesterov = false);

  void step();       // updates every parameter that has a gradient; one without is skipped, as in PyTorch
  // Fills the gradients with zeros, keeping their buffers (set_to_none=False), so that steps allocate
  // nothing. Not Module::zero_grad, which drops them.
  void zero_grad();
  void set_lr(float lr);
  float lr() const { return lr_; }
  float momentum() const { return momentum_; }
  bool nesterov() const { return nesterov_; }
  const std::vector<ParamGroup>& groups() const { return groups_; }

  // Checkpoint state: one momentum buffer per parameter, in group order then parameter order. A buffer
  // is undefined until its parameter's first step (always, when momentum is 0); a defined one has its
  // parameter's shape and device. A checkpoint loader may assign buffers: step() checks them.
  std::vector<Tensor>& momentum_buffers() { return buffers_; }

 private:
  std::vector<ParamGroup> groups_;
  std::vector<Tensor> buffers_;
  float lr_, momentum_;
  bool nesterov_;
};

}  // namespace engine
