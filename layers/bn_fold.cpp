#include "layers/bn_fold.h"

#include "engine/autograd.h"
#include "engine/ops.h"

namespace layers {

using namespace engine;

BnTensors bn_tensors(const BatchNorm2d& bn) {
  return {bn.gamma_used(), bn.bias, bn.running_mean, bn.running_var, bn.eps};
}

Moments channel_moments(const Tensor& x) {
  ENGINE_CHECK(x.dim() == 4, "expects [N, C, H, W], got " + x.str());
  const Tensor m = engine::channel_mean_var(x);  // [2, C]
  return {select(m, 0), select(m, 1)};
}

Moments estimate_moments(const Moments& x, const Tensor& kernel, const Tensor& bias, int groups) {
  ENGINE_CHECK(kernel.dim() == 4 && groups >= 1 && kernel.size(0) % groups == 0 &&
                   x.mean.numel() == kernel.size(1) * groups,
               "moments of " + std::to_string(x.mean.numel()) + " channels, kernel " + kernel.str() + ", " +
                   std::to_string(groups) + " groups");
  const int64_t o = kernel.size(0), per_group = kernel.size(1), g = groups;
  // [G, O/G, C/G] sums of each input channel's taps, times the moments of that channel [G, 1, C/G]
  auto through = [&](const Tensor& taps, const Tensor& moment) {
    Tensor t = reshape(sum(taps, {2, 3}, false), Shape{g, o / g, per_group});
    return reshape(sum(mul(t, reshape(moment, Shape{g, 1, per_group})), {2}, false), Shape{o});
  };
  Tensor mean = through(kernel, x.mean);          // Eq. 5
  if (bias.defined()) mean = add(mean, bias);
  return {mean, through(square(kernel), x.var)};  // Eq. 6
}

void update_running(BatchNorm2d& bn, const Moments& batch, int64_t count) {
  NoGradGuard no_grad;
  const float m = bn.momentum, unbias = count > 1 ? (float)count / (float)(count - 1) : 1.0f;
  bn.running_mean.copy_(add(mul_scalar(bn.running_mean, 1 - m), mul_scalar(batch.mean.detach(), m)));
  bn.running_var.copy_(add(mul_scalar(bn.running_var, 1 - m), mul_scalar(batch.var.detach(), m * unbias)));
}

BnStatistics::BnStatistics(BnFold fold, const Tensor& x, int stride, int groups)
    : fold(fold), x_(x), stride_(stride), groups_(groups) {
  ENGINE_CHECK(fold == BnFold::running || x.dim() == 4, "block input " + x.str() + ": expected [N, C, H, W]");
}

const Moments& BnStatistics::input_moments() {
  if (!x_moments_) x_moments_ = channel_moments(x_);
  return *x_moments_;
}

// gamma_used reads running_var before the update (OABN: the bound of this step, as BatchNorm2d::forward).
BnTensors BnStatistics::folded(BatchNorm2d& bn, const Moments& m, int64_t count) {
  BnTensors t{bn.gamma_used(), bn.bias, m.mean, m.var, bn.eps};
  update_running(bn, m, count);
  bn.track_batch();
  return t;
}

BnTensors BnStatistics::of(BatchNorm2d& bn, const Tensor& kernel, const Tensor& bias) {
  if (fold == BnFold::running) return bn_tensors(bn);
  const int64_t n = x_.size(0), h = (x_.size(2) - 1) / stride_ + 1, w = (x_.size(3) - 1) / stride_ + 1;
  if (fold == BnFold::estimated) return folded(bn, estimate_moments(input_moments(), kernel, bias, groups_), n * h * w);
  // RepQ-BN (Eq. 2): Y = X ∗ W, then μ and V of Y
  Tensor y = conv2d(x_, kernel, bias, stride_, Padding::centred(kernel), groups_);
  return folded(bn, channel_moments(y), n * h * w);
}

BnTensors BnStatistics::of_input(BatchNorm2d& bn) {
  if (fold == BnFold::running) return bn_tensors(bn);
  return folded(bn, input_moments(), x_.size(0) * x_.size(2) * x_.size(3));  // exact for both folds
}

}  // namespace layers
