// The RepVGG block (official DingXiaoH/RepVGG repvgg.py) and the QARepVGG S4 block (Chu et al. 2023,
// as the official QARepVGGBlockV2 without DropPath and its avg-pool branch), with the official
// state-dict names. Both switch to a deploy form: ReLU(rbr_reparam(x)), one 3x3 conv with bias.
#pragma once
#include <memory>

#include "engine/random.h"
#include "layers/layers.h"
#include "layers/reparam.h"

namespace layers {

// conv (no bias) then BN; PyTorch's nn.Sequential(conv, bn), so the names are `conv.*` and `bn.*`.
class ConvBN : public Module {
 public:
  ConvBN(int in, int out, int kernel, int stride, int padding, int groups, engine::Rng& rng);
  Tensor forward(const Tensor& x) override;

  std::shared_ptr<Conv2d> conv;
  std::shared_ptr<BatchNorm2d> bn;
};

// A BN's tensors for folding it: gamma as its forward uses it (OABN-clipped where on).
BnTensors bn_tensors(const BatchNorm2d& bn);

// What the two blocks share: shape, and the deploy form.
class RepBlock : public Module {
 public:
  RepBlock(int in, int out, int stride, int groups);
  // The equivalent 3x3 kernel and bias of the training-form branches (eval-mode), differentiable.
  virtual KernelBias equivalent_kernel_bias() const = 0;
  // Sets rbr_reparam to the merged conv (detached, a new leaf) and drops the branches. Idempotent.
  void switch_to_deploy() override;
  // forward with y in the blocked layout (engine/ops.h to_blocked) whatever x's: the model's first block,
  // whose 3-channel input does not block, hands the later blocks their layout without a reorder. This
  // default converts forward's y.
  virtual Tensor forward_blocked(const Tensor& x);
  bool deployed() const { return rbr_reparam != nullptr; }
  bool has_identity() const { return in_channels == out_channels && stride == 1; }

  const int in_channels, out_channels, stride, groups;
  std::shared_ptr<Conv2d> rbr_reparam;

 protected:
  virtual void drop_branches() = 0;
};

// Training form: ReLU(rbr_dense(x) + rbr_1x1(x) + rbr_identity(x)),
//   rbr_dense 3x3 conv+BN (padding 1), rbr_1x1 1x1 conv+BN (same stride, padding 0),
//   rbr_identity a BN alone, only when in == out and stride == 1.
class RepVGGBlock : public RepBlock {
 public:
  RepVGGBlock(int in, int out, int stride, int groups, engine::Rng& rng);
  Tensor forward(const Tensor& x) override;
  Tensor forward_blocked(const Tensor& x) override;
  KernelBias equivalent_kernel_bias() const override;

  std::shared_ptr<ConvBN> rbr_dense, rbr_1x1;
  std::shared_ptr<BatchNorm2d> rbr_identity;  // null without an identity branch

 private:
  void drop_branches() override;
  Tensor run(const Tensor& x, bool blocked_out);
};

// Training form: ReLU(bn(rbr_dense(x) + rbr_1x1(x) + x)),
//   rbr_dense 3x3 conv+BN, rbr_1x1 a 1x1 conv without BN nor bias, the identity (when in == out and
//   stride == 1) without BN, `bn` the BN after the sum.
class QARepVGGBlock : public RepBlock {
 public:
  QARepVGGBlock(int in, int out, int stride, int groups, engine::Rng& rng);
  Tensor forward(const Tensor& x) override;
  KernelBias equivalent_kernel_bias() const override;

  std::shared_ptr<ConvBN> rbr_dense;
  std::shared_ptr<Conv2d> rbr_1x1;
  std::shared_ptr<BatchNorm2d> bn;

 private:
  void drop_branches() override;
};

}  // namespace layers
