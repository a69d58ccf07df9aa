// The RepVGG block (official DingXiaoH/RepVGG repvgg.py) and the QARepVGG S4 block (Chu et al. 2023,
// as the official QARepVGGBlockV2 without DropPath and its avg-pool branch), with the official
// state-dict names. A block is in one of three modes:
//   branches  the training form: each branch convolved and batch-normalized, summed, ReLU
//   merged    RepQ (Prutianova et al. 2023, Sec. 4.1, Eq. 1): y = ReLU(conv(Q_a(x), Q_w(M), b)), with M, b the
//             merge of the branches (layers/reparam.h) computed each forward as a differentiable function of
//             the branch parameters, each BN folded with the statistics of layers/bn_fold.h
//   deploy    one 3x3 conv with bias, rbr_reparam: y = ReLU(conv(Q_a(x), Q_w(W), b))
// Q_a and Q_w are the block's `quant` (layers/layer_quantizers.h), null where the block stays FP32; Q_w is
// either LSQ's uniform quantizer or ClusterQAT's codebook; with both uniform, b is rounded to its int32 grid
// in eval (layers::eval_bias), as integer kernels and ./export --qdq hold it, and stays float in training. Without quantizers, merged mode with batch folding is the branches'
// function in training, and with running statistics the deploy conv's in eval.
#pragma once
#include <functional>
#include <memory>

#include "engine/random.h"
#include "layers/bn_fold.h"
#include "layers/cluster_quantizer.h"
#include "layers/layer_quantizers.h"
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

// relu(Σᵢ bns[i](xs[i])) (without the ReLU where relu is false): the training form's tail of a block whose
// branches each end in a BN. The BNs, the sum and the ReLU run as one op (engine::bn_add_relu) when the BNs
// share mode, momentum and eps (as always, unless set otherwise), else as the composed ops.
Tensor bn_sum_relu(const std::vector<Tensor>& xs, const std::vector<BatchNorm2d*>& bns, bool relu = true);

enum class BlockMode { branches, merged, deploy };

// What the blocks share (RepVGGBlock, QARepVGGBlock here, ACBlock in layers/acnet_block.h, OREPABlock in
// layers/orepa_block.h, ConvBNBlock in layers/conv_bn_block.h): shape, the modes, the quantizers. Every block
// is one k x k conv with padding (k − 1) / 2 in deploy form (k = 3 but for ConvBNBlock), ReLU last unless
// `relu` is off (ResNet's conv2, whose ReLU follows the shortcut's add, and its 1x1 shortcut).
class RepBlock : public Module {
 public:
  RepBlock(int in, int out, int stride, int groups, int kernel = 3);
  Tensor forward(const Tensor& x) override;

  BlockMode mode() const;
  bool deployed() const { return mode() == BlockMode::deploy; }
  // Whether the block has an identity branch (RepVGG's and QARepVGG's when in == out and stride 1; ACB's
  // never): the taps where OABN's outliers live.
  virtual bool has_identity() const = 0;

  // The equivalent k x k kernel [O, I/g, k, k] and bias [O] of the branches, differentiable in the branch
  // parameters, each BN folded with what `stats` gives (which may update running statistics).
  virtual KernelBias kernel_bias(BnStatistics& stats) = 0;
  KernelBias equivalent_kernel_bias();  // with the running statistics, as eval mode

  // Merged mode (from branches): the forward merges the branches each step, BNs folded by `fold` in
  // training (running statistics in eval).
  void switch_to_merged(BnFold fold);
  // Deploy mode: rbr_reparam set to the merged conv (detached, a new leaf) and the branches dropped;
  // the quantizers stay. Idempotent.
  void switch_to_deploy() override;

  const int in_channels, out_channels, stride, groups, kernel;
  bool relu = true;
  // Called with the block's input at each forward where set (./inspect takes each block's input in the model's
  // own forward).
  std::function<void(const Tensor& x)> input_observer;
  std::shared_ptr<Conv2d> rbr_reparam;
  LayerQuantizers quant{*this, ""};  // Q_a and Q_w of the conv: "act_quant", "weight_quant"
  BnFold fold = BnFold::batch;  // merged mode, in training

 protected:
  virtual Tensor forward_branches(const Tensor& x) = 0;
  virtual void drop_branches() = 0;

 private:
  // RepQ Eq. 1: ReLU(conv(Q_a(x), Q_w(w), b)), k x k with padding (k − 1) / 2 (no ReLU where relu is off)
  Tensor quantized_conv_relu(const Tensor& x, const Tensor& w, const Tensor& b);
  bool merged_ = false;
};

// Training form: ReLU(rbr_dense(x) + rbr_1x1(x) + rbr_identity(x)),
//   rbr_dense 3x3 conv+BN (padding 1), rbr_1x1 1x1 conv+BN (same stride, padding 0),
//   rbr_identity a BN alone, only when in == out and stride == 1.
class RepVGGBlock : public RepBlock {
 public:
  RepVGGBlock(int in, int out, int stride, int groups, engine::Rng& rng);
  KernelBias kernel_bias(BnStatistics& stats) override;
  bool has_identity() const override { return in_channels == out_channels && stride == 1; }

  std::shared_ptr<ConvBN> rbr_dense, rbr_1x1;
  std::shared_ptr<BatchNorm2d> rbr_identity;  // null without an identity branch

 private:
  Tensor forward_branches(const Tensor& x) override;
  void drop_branches() override;
};

// Training form: ReLU(bn(rbr_dense(x) + rbr_1x1(x) + x)),
//   rbr_dense 3x3 conv+BN, rbr_1x1 a 1x1 conv without BN nor bias, the identity (when in == out and
//   stride == 1) without BN, `bn` the BN after the sum.
class QARepVGGBlock : public RepBlock {
 public:
  QARepVGGBlock(int in, int out, int stride, int groups, engine::Rng& rng);
  KernelBias kernel_bias(BnStatistics& stats) override;
  bool has_identity() const override { return in_channels == out_channels && stride == 1; }

  std::shared_ptr<ConvBN> rbr_dense;
  std::shared_ptr<Conv2d> rbr_1x1;
  std::shared_ptr<BatchNorm2d> bn;

 private:
  Tensor forward_branches(const Tensor& x) override;
  void drop_branches() override;
};

}  // namespace layers
