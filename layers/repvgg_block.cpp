#include "layers/repvgg_block.h"

#include "engine/autograd.h"
#include "engine/ops.h"

namespace layers {

ConvBN::ConvBN(int in, int out, int kernel, int stride, int padding, int groups, engine::Rng& rng) {
  conv = register_module("conv", std::make_shared<Conv2d>(in, out, kernel, stride, padding, groups, false, rng));
  bn = register_module("bn", std::make_shared<BatchNorm2d>(out));
}

Tensor ConvBN::forward(const Tensor& x) { return bn->forward(conv->forward(x)); }

BnTensors bn_tensors(const BatchNorm2d& bn) {
  return {bn.gamma_used(), bn.bias, bn.running_mean, bn.running_var, bn.eps};
}

RepBlock::RepBlock(int in, int out, int stride, int groups)
    : in_channels(in), out_channels(out), stride(stride), groups(groups) {}

void RepBlock::switch_to_deploy() {
  if (deployed()) return;
  KernelBias kb;
  {
    engine::NoGradGuard no_grad;
    kb = equivalent_kernel_bias();
  }
  drop_branches();
  rbr_reparam = register_module("rbr_reparam",
                                std::make_shared<Conv2d>(kb.kernel.detach(), kb.bias.detach(), stride, 1, groups));
}

RepVGGBlock::RepVGGBlock(int in, int out, int stride, int groups, engine::Rng& rng)
    : RepBlock(in, out, stride, groups) {
  if (has_identity()) rbr_identity = register_module("rbr_identity", std::make_shared<BatchNorm2d>(in));
  rbr_dense = register_module("rbr_dense", std::make_shared<ConvBN>(in, out, 3, stride, 1, groups, rng));
  rbr_1x1 = register_module("rbr_1x1", std::make_shared<ConvBN>(in, out, 1, stride, 0, groups, rng));
}

// The deployed block: the merged conv with its ReLU, in one call when no gradient is recorded.
static Tensor deployed_forward(const Conv2d& c, const Tensor& x) {
  return engine::conv2d_relu(x, c.weight, c.bias, c.stride, c.padding, c.groups);
}

Tensor RepVGGBlock::forward(const Tensor& x) {
  if (deployed()) return deployed_forward(*rbr_reparam, x);
  std::vector<BatchNorm2d*> bns = {rbr_dense->bn.get(), rbr_1x1->bn.get()};
  if (rbr_identity) bns.push_back(rbr_identity.get());
  bool fusable = true;  // one mode, momentum and eps for the three BNs (as always, unless set otherwise)
  for (BatchNorm2d* bn : bns)
    fusable &= bn->training() == bns[0]->training() && bn->momentum == bns[0]->momentum && bn->eps == bns[0]->eps;
  if (!fusable) {
    Tensor sum = engine::add(rbr_dense->forward(x), rbr_1x1->forward(x));
    if (rbr_identity) sum = engine::add(sum, rbr_identity->forward(x));
    return engine::relu(sum);
  }
  // relu(bn(dense(x)) + bn(1x1(x)) + bn(x)) with the BNs, the sum and the ReLU in one op (ops.h bn_add_relu)
  std::vector<Tensor> xs = {rbr_dense->conv->forward(x), rbr_1x1->conv->forward(x)};
  if (rbr_identity) xs.push_back(x);
  std::vector<engine::BnParams> params;
  for (BatchNorm2d* bn : bns) {
    // gamma_used reads running_var before the op updates it (OABN: the bound of this step)
    params.push_back({bn->gamma_used(), bn->bias, bn->running_mean, bn->running_var});
    if (bn->training()) bn->num_batches_tracked++;
  }
  return engine::bn_add_relu(xs, params, bns[0]->training(), bns[0]->momentum, bns[0]->eps);
}

KernelBias RepVGGBlock::equivalent_kernel_bias() const {
  ENGINE_CHECK(!deployed(), "the block is in deploy form already");
  BnTensors id = rbr_identity ? bn_tensors(*rbr_identity) : BnTensors{};
  return merge_repvgg(rbr_dense->conv->weight, bn_tensors(*rbr_dense->bn), rbr_1x1->conv->weight,
                      bn_tensors(*rbr_1x1->bn), rbr_identity ? &id : nullptr, groups);
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

Tensor QARepVGGBlock::forward(const Tensor& x) {
  if (deployed()) return deployed_forward(*rbr_reparam, x);
  Tensor sum = engine::add(rbr_dense->forward(x), rbr_1x1->forward(x));
  if (has_identity()) sum = engine::add(sum, x);
  return engine::relu(bn->forward(sum));
}

KernelBias QARepVGGBlock::equivalent_kernel_bias() const {
  ENGINE_CHECK(!deployed(), "the block is in deploy form already");
  return merge_qarepvgg(rbr_dense->conv->weight, bn_tensors(*rbr_dense->bn), rbr_1x1->weight, has_identity(), groups,
                        bn_tensors(*bn));
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
