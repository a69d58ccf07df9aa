#include "layers/acnet_block.h"

#include <cmath>

#include "engine/ops.h"

namespace layers {

using engine::Shape;

CentredConv::CentredConv(int in, int out, int kh, int kw, int stride, int groups, engine::Rng& rng)
    : stride(stride), groups(groups) {
  ENGINE_CHECK(groups >= 1 && in % groups == 0 && out % groups == 0,
               "channels " + std::to_string(in) + " -> " + std::to_string(out) + " do not split into " +
                   std::to_string(groups) + " groups");
  ENGINE_CHECK((kh == 1 || kh == 3) && (kw == 1 || kw == 3),
               "a centred conv is 1 or 3 taps each way, got " + std::to_string(kh) + "x" + std::to_string(kw));
  const float bound = 1.0f / std::sqrt((float)(in / groups * kh * kw));  // as layers::Conv2d: PyTorch's default
  weight = register_parameter("weight", engine::rand_uniform(Shape{out, in / groups, kh, kw}, -bound, bound, rng),
                              ParamKind::weight);
}

Tensor CentredConv::forward(const Tensor& x) {
  return engine::conv2d(x, weight, Tensor(), stride, engine::Padding::centred(weight), groups);
}

// Registered in the official module order (square_conv, square_bn, ver_conv, hor_conv, ver_bn, hor_bn), so the
// state dict lists its tensors as PyTorch's does.
ACBlock::ACBlock(int in, int out, int stride, int groups, engine::Rng& rng) : RepBlock(in, out, stride, groups) {
  square_conv = register_module("square_conv", std::make_shared<Conv2d>(in, out, 3, stride, 1, groups, false, rng));
  square_bn = register_module("square_bn", std::make_shared<BatchNorm2d>(out));
  ver_conv = register_module("ver_conv", std::make_shared<CentredConv>(in, out, 3, 1, stride, groups, rng));
  hor_conv = register_module("hor_conv", std::make_shared<CentredConv>(in, out, 1, 3, stride, groups, rng));
  ver_bn = register_module("ver_bn", std::make_shared<BatchNorm2d>(out));
  hor_bn = register_module("hor_bn", std::make_shared<BatchNorm2d>(out));
}

Tensor ACBlock::forward_branches(const Tensor& x) {
  return bn_sum_relu({square_conv->forward(x), hor_conv->forward(x), ver_conv->forward(x)},
                     {square_bn.get(), hor_bn.get(), ver_bn.get()}, relu);
}

// Each BN's statistics are those of its branch's output (BnStatistics::of convolves the thin kernels with
// their own centred padding, as the branches do), so RepQ-BN's batch statistics are exact; RepQ-BNEst's
// Eq. 5-6 sum the taps of W and W², which the padding does not change.
KernelBias ACBlock::kernel_bias(BnStatistics& stats) {
  ENGINE_CHECK(!deployed(), "the block is in deploy form already");
  const Tensor& square = square_conv->weight;
  const BnTensors s = stats.of(*square_bn, square);
  const BnTensors h = stats.of(*hor_bn, hor_conv->weight);
  const BnTensors v = stats.of(*ver_bn, ver_conv->weight);
  return merge_acb(square, s, hor_conv->weight, h, ver_conv->weight, v);
}

void ACBlock::drop_branches() {
  for (const char* name : {"square_conv", "square_bn", "ver_conv", "hor_conv", "ver_bn", "hor_bn"}) remove_module(name);
  square_conv = nullptr;
  square_bn = ver_bn = hor_bn = nullptr;
  ver_conv = hor_conv = nullptr;
}

}  // namespace layers
