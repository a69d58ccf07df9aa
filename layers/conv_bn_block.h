// One conv and its BN as a block: torchvision ResNet's own layers (its convs with their BNs: the stem, each
// BasicBlock's 3x3s in the plain ResNet-18, the 1x1 downsample shortcuts), with the blocks' three modes,
// so that quantization, the exports and ./infer treat them as every other layer:
//   branches  ReLU(bn(conv(x))), conv k x k with padding (k − 1) / 2, no bias; names "conv.*", "bn.*"
//             (torchvision's "conv1.weight", "bn1.*", "downsample.0.weight", "downsample.1.*")
//   merged    RepQ's merged mode with one branch: W, b = fold_bn(conv, bn) each step (RepVGG Eq. (3)-(4)),
//             the BN's statistics those of layers/bn_fold.h: the BN folding of standard QAT (Jacob et al. 2018)
//   deploy    rbr_reparam, the conv with the BN folded in
#pragma once
#include <memory>

#include "engine/random.h"
#include "layers/repvgg_block.h"

namespace layers {

class ConvBNBlock : public RepBlock {
 public:
  ConvBNBlock(int in, int out, int kernel, int stride, int groups, engine::Rng& rng);
  KernelBias kernel_bias(BnStatistics& stats) override;
  bool has_identity() const override { return false; }

  std::shared_ptr<Conv2d> conv;
  std::shared_ptr<BatchNorm2d> bn;

 private:
  Tensor forward_branches(const Tensor& x) override;
  void drop_branches() override;
};

}  // namespace layers
