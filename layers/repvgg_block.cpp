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

Tensor RepBlock::forward_blocked(const Tensor& x) {
  Tensor y = forward(x);
  return engine::is_blocked(y) ? y : engine::to_blocked(y);
}

// The deployed block: the merged conv with its ReLU, in one call when no gradient is recorded.
static Tensor deployed_forward(const Conv2d& c, const Tensor& x, bool blocked_out = false) {
  return engine::conv2d_relu(x, c.weight, c.bias, c.stride, c.padding, c.groups, blocked_out);
}

Tensor RepVGGBlock::forward(const Tensor& x) { return run(x, false); }
Tensor RepVGGBlock::forward_blocked(const Tensor& x) { return run(x, true); }

// blocked_out: y in the blocked layout whatever x's (a blocked x gives a blocked y in any case).
Tensor RepVGGBlock::run(const Tensor& x, bool blocked_out) {
  using engine::is_blocked;
  if (deployed()) return deployed_forward(*rbr_reparam, x, blocked_out);
  std::vector<BatchNorm2d*> bns = {rbr_dense->bn.get(), rbr_1x1->bn.get()};
  if (rbr_identity) bns.push_back(rbr_identity.get());
  bool fusable = true;  // one mode, momentum and eps for the three BNs (as always, unless set otherwise)
  for (BatchNorm2d* bn : bns)
    fusable &= bn->training() == bns[0]->training() && bn->momentum == bns[0]->momentum && bn->eps == bns[0]->eps;
  if (!fusable) {  // the composed ops, in the plain layout
    const Tensor xp = is_blocked(x) ? engine::to_plain(x) : x;
    Tensor sum = engine::add(rbr_dense->forward(xp), rbr_1x1->forward(xp));
    if (rbr_identity) sum = engine::add(sum, rbr_identity->forward(xp));
    Tensor y = engine::relu(sum);
    return is_blocked(x) || blocked_out ? engine::to_blocked(y) : y;
  }
  // relu(bn(dense(x)) + bn(1x1(x)) + bn(x)) with the BNs, the sum and the ReLU in one op (ops.h bn_add_relu)
  auto conv = [&](const Conv2d& c) {
    return engine::conv2d(x, c.weight, c.bias, c.stride, c.padding, c.groups, blocked_out);
  };
  std::vector<Tensor> xs = {conv(*rbr_dense->conv), conv(*rbr_1x1->conv)};
  if (rbr_identity) xs.push_back(blocked_out && !is_blocked(x) ? engine::to_blocked(x) : x);
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
