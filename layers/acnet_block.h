// ACNet's Asymmetric Convolution Block (Ding, Guo, Ding, Han, ICCV 2019; official DingXiaoH/ACNet acnet/acb.py
// ACBlock) as a block of our RepVGG-style plain nets, with the official state-dict names of its branches:
//   branches  ReLU(square_bn(square_conv(x)) + hor_bn(hor_conv(x)) + ver_bn(ver_conv(x))),
//             square_conv 3x3 (padding 1), hor_conv 1x3 (padding 0, 1), ver_conv 3x1 (padding 1, 0), all with the
//             block's stride and groups and no bias; no identity branch
//   merged    RepQ's merged mode, as every RepBlock: M, b = merge_acb(...) of the branches each step
//   deploy    rbr_reparam, one 3x3 conv with bias (the official code's fused_conv), as every block of ours: the
//             quantizers, the int8 file and the ONNX export find the deploy conv by that name
// The official ACBlock replaces a conv and has no ReLU; ours adds the ReLU our blocks end with (ACNet's
// conv_bn_relu places the ACB before one).
//
// A file of its own rather than layers/repvgg_block.h: another paper's block, with its own branch kind
// (CentredConv); what it shares with the RepVGG blocks is RepBlock and bn_sum_relu, declared there.
#pragma once
#include <memory>

#include "engine/random.h"
#include "layers/repvgg_block.h"

namespace layers {

// A conv without bias whose kernel [O, I/g, kh, kw] (kh, kw each 1 or 3) sits centred in a 3x3 window:
// padding ((kh − 1)/2, (kw − 1)/2) (ACNet's hor_conv: (0, 1), ver_conv: (1, 0)), so its output has the 3x3
// conv's size and equals conv(x, pad_to_3x3(weight), padding 1). State dict: "weight", PyTorch's init.
class CentredConv : public Module {
 public:
  CentredConv(int in, int out, int kh, int kw, int stride, int groups, engine::Rng& rng);
  Tensor forward(const Tensor& x) override;

  Tensor weight;
  const int stride, groups;
};

class ACBlock : public RepBlock {
 public:
  ACBlock(int in, int out, int stride, int groups, engine::Rng& rng);
  KernelBias kernel_bias(BnStatistics& stats) override;
  bool has_identity() const override { return false; }

  std::shared_ptr<Conv2d> square_conv;
  std::shared_ptr<BatchNorm2d> square_bn;
  std::shared_ptr<CentredConv> ver_conv, hor_conv;  // 3x1, 1x3
  std::shared_ptr<BatchNorm2d> ver_bn, hor_bn;

 private:
  Tensor forward_branches(const Tensor& x) override;
  void drop_branches() override;
};

}  // namespace layers
