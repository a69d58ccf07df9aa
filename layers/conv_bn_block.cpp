#include "layers/conv_bn_block.h"

#include "engine/ops.h"

namespace layers {

ConvBNBlock::ConvBNBlock(int in, int out, int kernel, int stride, int groups, engine::Rng& rng)
    : RepBlock(in, out, stride, groups, kernel) {
  conv = register_module("conv", std::make_shared<Conv2d>(in, out, kernel, stride, kernel / 2, groups, false, rng));
  bn = register_module("bn", std::make_shared<BatchNorm2d>(out));
}

Tensor ConvBNBlock::forward_branches(const Tensor& x) { return bn_sum_relu({conv->forward(x)}, {bn.get()}, relu); }

KernelBias ConvBNBlock::kernel_bias(BnStatistics& stats) {
  ENGINE_CHECK(!deployed(), "the block is in deploy form already");
  return fold_bn(conv->weight, stats.of(*bn, conv->weight));
}

void ConvBNBlock::drop_branches() {
  remove_module("conv");
  remove_module("bn");
  conv = nullptr;
  bn = nullptr;
}

}  // namespace layers
