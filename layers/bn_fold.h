// Where a BN's μ and σ² come from when it folds into the conv before it (layers/reparam.h fold_bn), the
// one place that decides it for every block (RepQ, Prutianova et al. BMVC 2023, Sec. 4):
//   running    the running statistics: eval, deploy, and ./ptq
//   batch      RepQ-BN (Sec. 4.2, Eq. 2, Algorithm 1): the batch statistics of the BN's input y = x ∗ W + b,
//              computed from y, differentiably; the running statistics updated as BatchNorm2d does
//   estimated  RepQ-BNEst (Sec. 4.3, Eq. 5-6): the same statistics estimated from x's per-channel moments
//              without computing y
// With batch folding and no quantizers, a merged block is the same function as its 3-branch form in
// training: conv(x, Σ W_i t_i) + Σ (β_i − μ_i t_i) = Σ BN_i(x ∗ W_i).
#pragma once
#include <optional>

#include "layers/layers.h"
#include "layers/reparam.h"

namespace layers {

enum class BnFold { running, batch, estimated };

// A BN's tensors for folding it with its running statistics: gamma as its forward uses it (OABN-clipped
// where on).
BnTensors bn_tensors(const BatchNorm2d& bn);

// The per-channel moments of x [N, C, H, W] over N, H, W: mean and biased variance [C], differentiable.
struct Moments {
  Tensor mean, var;
};
Moments channel_moments(const Tensor& x);

// RepQ-BNEst, Eq. 5-6: the moments of y = x ∗ W + b [N, O, H', W'] from those of x [C], kernel
// [O, C/groups, kh, kw], bias [O] or undefined, input channels independent, padding ignored:
//     E[y_o] ≈ Σ_{i ∈ group(o)} E[x_i] · Σ_{h,w} W[o, i, h, w]  + b_o          (Eq. 5)
//     V[y_o] ≈ Σ_{i ∈ group(o)} V[x_i] · Σ_{h,w} W[o, i, h, w]²                 (Eq. 6)
Moments estimate_moments(const Moments& x, const Tensor& kernel, const Tensor& bias, int groups);

// The running-statistics update of a training-mode BatchNorm2d from the moments of its input (`count`
// values per channel): running = (1 − m) running + m batch, the variance unbiased by count / (count − 1).
void update_running(BatchNorm2d& bn, const Moments& batch, int64_t count);

// The BN statistics of one block forward. x: the block's input [N, C, H, W] (plain layout).
class BnStatistics {
 public:
  BnStatistics(BnFold fold, const Tensor& x, int stride, int groups);
  // The tensors to fold `bn`, whose input is conv(x, kernel, stride, padding (kh/2, kw/2)) + bias (bias may be
  // undefined). batch and estimated also update bn's running statistics and count the batch.
  BnTensors of(BatchNorm2d& bn, const Tensor& kernel, const Tensor& bias = {});
  // The same for a BN whose input is x itself (RepVGG's identity branch).
  BnTensors of_input(BatchNorm2d& bn);

  const BnFold fold;

 private:
  BnTensors folded(BatchNorm2d& bn, const Moments& m, int64_t count);
  const Moments& input_moments();

  Tensor x_;
  int stride_, groups_;
  std::optional<Moments> x_moments_;  // computed once per forward, when needed
};

}  // namespace layers
