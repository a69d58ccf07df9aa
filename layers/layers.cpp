#include "layers/layers.h"

#include <cmath>

#include "engine/ops.h"
#include "layers/oabn.h"

namespace layers {

using engine::Shape;

// torch.nn.init.kaiming_uniform_(w, a=sqrt(5)): gain sqrt(2 / (1 + a²)) = sqrt(1/3), bound
// gain * sqrt(3 / fan_in) = 1 / sqrt(fan_in); PyTorch's bias bound is the same 1 / sqrt(fan_in).
static float default_bound(int64_t fan_in) { return 1.0f / std::sqrt((float)fan_in); }

Conv2d::Conv2d(int in, int out, int kernel, int stride, int padding, int groups, bool bias, engine::Rng& rng)
    : stride(stride), padding(padding), groups(groups) {
  ENGINE_CHECK(groups >= 1 && in % groups == 0 && out % groups == 0,
               "channels " + std::to_string(in) + " -> " + std::to_string(out) + " do not split into " +
                   std::to_string(groups) + " groups");
  const float bound = default_bound((int64_t)in / groups * kernel * kernel);
  weight = register_parameter("weight", engine::rand_uniform(Shape{out, in / groups, kernel, kernel}, -bound, bound, rng),
                              ParamKind::weight);
  if (bias) this->bias = register_parameter("bias", engine::rand_uniform(Shape{out}, -bound, bound, rng), ParamKind::bias);
}

Conv2d::Conv2d(Tensor w, Tensor b, int stride, int padding, int groups)
    : stride(stride), padding(padding), groups(groups) {
  ENGINE_CHECK(w.dim() == 4 && (!b.defined() || b.shape() == Shape{w.size(0)}),
               "conv weight " + w.str() + " and bias " + b.str());
  weight = register_parameter("weight", w, ParamKind::weight);
  if (b.defined()) bias = register_parameter("bias", b, ParamKind::bias);
}

Tensor Conv2d::forward(const Tensor& x) { return engine::conv2d(x, weight, bias, stride, padding, groups); }

BatchNorm2d::BatchNorm2d(int channels) {
  weight = register_parameter("weight", Tensor::full(Shape{channels}, 1.0f), ParamKind::bn);
  bias = register_parameter("bias", Tensor::zeros(Shape{channels}), ParamKind::bn);
  running_mean = register_buffer("running_mean", Tensor::zeros(Shape{channels}));
  running_var = register_buffer("running_var", Tensor::full(Shape{channels}, 1.0f));
}

Tensor BatchNorm2d::gamma_used() const {
  return oabn_k > 0 ? oabn_clip_gamma(weight, running_var, oabn_k) : weight;
}

Tensor BatchNorm2d::forward(const Tensor& x) {
  // gamma_used reads running_var before batch_norm2d updates it in place (OABN: the bound of this step).
  Tensor gamma = gamma_used();
  track_batch();
  return engine::batch_norm2d(x, gamma, bias, running_mean, running_var, training(), momentum, eps);
}

Linear::Linear(int in, int out, engine::Rng& rng) {
  ENGINE_CHECK(in > 0 && out > 0, "a linear layer of " + std::to_string(in) + " inputs and " + std::to_string(out) +
                                      " outputs (classes): both must be at least 1");
  const float bound = default_bound(in);
  weight = register_parameter("weight", engine::rand_uniform(Shape{out, in}, -bound, bound, rng), ParamKind::weight);
  bias = register_parameter("bias", engine::rand_uniform(Shape{out}, -bound, bound, rng), ParamKind::bias);
}

Tensor Linear::forward(const Tensor& x) { return engine::linear(x, weight, bias); }

Tensor ReLU::forward(const Tensor& x) { return engine::relu(x); }

}  // namespace layers
