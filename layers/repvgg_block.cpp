#include "layers/repvgg_block.h"

#include "engine/autograd.h"
#include "engine/ops.h"

namespace layers {


ConvBN::ConvBN(int in, int out, int kernel, int stride, int padding, int groups, engine::Rng& rng) {
  conv = register_module("conv", std::make_shared<Conv2d>(in, out, kernel, stride, padding, groups, false, rng));
  bn = register_module("bn", std::make_shared<BatchNorm2d>(out));
}

Tensor ConvBN::forward(const Tensor& x) { return bn->forward(conv->forward(x)); }

RepBlock::RepBlock(int in, int out, int stride, int groups, int kernel)
    : in_channels(in), out_channels(out), stride(stride), groups(groups), kernel(kernel) {}

BlockMode RepBlock::mode() const {
  return rbr_reparam ? BlockMode::deploy : merged_ ? BlockMode::merged : BlockMode::branches;
}

// Only reads the running statistics, which kernel_bias does not change when they are its source.
KernelBias RepBlock::equivalent_kernel_bias() {
  ENGINE_CHECK(!deployed(), "the block is in deploy form already");
  BnStatistics running(BnFold::running, Tensor(), stride, groups);
  return kernel_bias(running);
}

void RepBlock::switch_to_merged(BnFold f) {
  ENGINE_CHECK(!deployed(), "a block in deploy form has no branches to merge");
  merged_ = true;
  fold = f;
}

void RepBlock::switch_to_deploy() {
  if (deployed()) return;
  KernelBias kb;
  {
    engine::NoGradGuard no_grad;
    kb = equivalent_kernel_bias();
  }
  drop_branches();
  merged_ = false;
  rbr_reparam = register_module("rbr_reparam",
                                std::make_shared<Conv2d>(kb.kernel.detach(), kb.bias.detach(), stride, kernel / 2, groups));
}

Tensor RepBlock::quantized_conv_relu(const Tensor& x, const Tensor& w, const Tensor& b) {
  const Tensor xq = quant.quantize_input(x), wq = quant.quantize_weight(w), bq = quant.quantized_bias(b, training());
  return relu ? engine::conv2d_relu(xq, wq, bq, stride, kernel / 2, groups) : engine::conv2d(xq, wq, bq, stride, kernel / 2, groups);
}

Tensor RepBlock::forward(const Tensor& x) {
  if (input_observer) input_observer(x);
  switch (mode()) {
    case BlockMode::deploy: return quantized_conv_relu(x, rbr_reparam->weight, rbr_reparam->bias);
    case BlockMode::branches: return forward_branches(x);
    case BlockMode::merged: break;
  }
  BnStatistics stats(training() ? fold : BnFold::running, x, stride, groups);
  const KernelBias kb = kernel_bias(stats);
  return quantized_conv_relu(x, kb.kernel, kb.bias);
}

RepVGGBlock::RepVGGBlock(int in, int out, int stride, int groups, engine::Rng& rng)
    : RepBlock(in, out, stride, groups) {
  if (has_identity()) rbr_identity = register_module("rbr_identity", std::make_shared<BatchNorm2d>(in));
  rbr_dense = register_module("rbr_dense", std::make_shared<ConvBN>(in, out, 3, stride, 1, groups, rng));
  rbr_1x1 = register_module("rbr_1x1", std::make_shared<ConvBN>(in, out, 1, stride, 0, groups, rng));
}

Tensor bn_sum_relu(const std::vector<Tensor>& xs, const std::vector<BatchNorm2d*>& bns, bool relu) {
  ENGINE_CHECK(!xs.empty() && xs.size() == bns.size(), std::to_string(xs.size()) + " branch outputs for " +
                                                           std::to_string(bns.size()) + " BNs");
  bool fusable = true;  // one mode, momentum and eps for the BNs (as always, unless set otherwise)
  for (BatchNorm2d* bn : bns)
    fusable &= bn->training() == bns[0]->training() && bn->momentum == bns[0]->momentum && bn->eps == bns[0]->eps;
  if (!fusable) {  // the composed ops
    Tensor sum = bns[0]->forward(xs[0]);
    for (size_t i = 1; i < xs.size(); i++) sum = engine::add(sum, bns[i]->forward(xs[i]));
    return relu ? engine::relu(sum) : sum;
  }
  std::vector<engine::BnParams> params;
  for (BatchNorm2d* bn : bns) {
    // gamma_used reads running_var before the op updates it (OABN: the bound of this step)
    params.push_back({bn->gamma_used(), bn->bias, bn->running_mean, bn->running_var});
    bn->track_batch();
  }
  return engine::bn_add_relu(xs, params, bns[0]->training(), bns[0]->momentum, bns[0]->eps, relu);
}

// relu(bn(dense(x)) + bn(1x1(x)) + bn(x))
Tensor RepVGGBlock::forward_branches(const Tensor& x) {
  auto conv = [&](const Conv2d& c) {
    return engine::conv2d(x, c.weight, c.bias, c.stride, c.padding, c.groups);
  };
  std::vector<Tensor> xs = {conv(*rbr_dense->conv), conv(*rbr_1x1->conv)};
  std::vector<BatchNorm2d*> bns = {rbr_dense->bn.get(), rbr_1x1->bn.get()};
  if (rbr_identity) {
    xs.push_back(x);
    bns.push_back(rbr_identity.get());
  }
  return bn_sum_relu(xs, bns, relu);
}

KernelBias RepVGGBlock::kernel_bias(BnStatistics& stats) {
  ENGINE_CHECK(!deployed(), "the block is in deploy form already");
  const Tensor& k3 = rbr_dense->conv->weight;
  const Tensor& k1 = rbr_1x1->conv->weight;
  BnTensors id = rbr_identity ? stats.of_input(*rbr_identity) : BnTensors{};
  return merge_repvgg(k3, stats.of(*rbr_dense->bn, k3), k1, stats.of(*rbr_1x1->bn, k1), rbr_identity ? &id : nullptr,
                      groups);
}

void RepVGGBlock::drop_branches() {
  if (rbr_identity) remove_module("rbr_identity");
  remove_module("rbr_dense");
  remove_module("rbr_1x1");
  rbr_identity = nullptr;
  rbr_dense = rbr_1x1 = nullptr;
}

QARepVGGBlock::QARepVGGBlock(int in, int out, int stride, int groups, engine::Rng& rng)
    : RepBlock(in, out, stride, groups) {
  rbr_dense = register_module("rbr_dense", std::make_shared<ConvBN>(in, out, 3, stride, 1, groups, rng));
  rbr_1x1 = register_module("rbr_1x1", std::make_shared<Conv2d>(in, out, 1, stride, 0, groups, false, rng));
  bn = register_module("bn", std::make_shared<BatchNorm2d>(out));
}

Tensor QARepVGGBlock::forward_branches(const Tensor& x) {
  Tensor sum = engine::add(rbr_dense->forward(x), rbr_1x1->forward(x));
  if (has_identity()) sum = engine::add(sum, x);
  return relu ? engine::relu(bn->forward(sum)) : bn->forward(sum);
}

// The dense BN folds first; the post-sum BN's input is then conv(x, W) + b of the branch sum.
KernelBias QARepVGGBlock::kernel_bias(BnStatistics& stats) {
  ENGINE_CHECK(!deployed(), "the block is in deploy form already");
  const Tensor& k3 = rbr_dense->conv->weight;
  const KernelBias sum = qarepvgg_sum(k3, stats.of(*rbr_dense->bn, k3), rbr_1x1->weight, has_identity(), groups);
  return fold_bn(sum, stats.of(*bn, sum.kernel, sum.bias));
}

void QARepVGGBlock::drop_branches() {
  remove_module("rbr_dense");
  remove_module("rbr_1x1");
  remove_module("bn");
  rbr_dense = nullptr;
  rbr_1x1 = nullptr;
  bn = nullptr;
}

}  // namespace layers
