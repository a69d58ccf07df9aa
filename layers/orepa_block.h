// OREPA's block (Hu et al., CVPR 2022, "Online Convolutional Re-parameterization"; official
// JUGGHM/OREPA_CVPR2022 blocks.py, class OREPA, kernel 3, padding 1, its defaults) as a block of our
// RepVGG-style plain nets, with the official state-dict names:
//   branches  the training form, as the official one: ReLU(bn(conv(x, M))), M = merge_orepa(...) of the six
//             linear branches and their scaling vectors (layers/orepa_merge.h), merged online each step:
//             one conv and one BN per step whatever the branches
//   merged    RepQ's merged mode, as every RepBlock: the BN folded into M (batch, estimated or running
//             statistics, layers/bn_fold.h), then the quantizers
//   deploy    rbr_reparam, one 3x3 conv with bias (official: orepa_reparam), as every block of ours
// The official OREPA replaces a conv+BN and takes a `nonlinear`; ours ends with the ReLU our blocks end
// with (official conv_bn_relu's nonlinear=nn.ReLU()).
//
// Official defaults kept: internal channels of the 1x1-kxk branch T = I if groups <= 4 else 2 I, the dws
// branch's expansion 8, init_hyper_para = init_hyper_gamma = 1 (no rescaling), the vector's rows 0.25,
// 0.25, 0, 0.5, 1, 0.5, the weights' kaiming_uniform_(a=0), weight_only off, single_init off.
#pragma once
#include <memory>

#include "engine/random.h"
#include "layers/orepa_merge.h"
#include "layers/repvgg_block.h"

namespace layers {

class OREPABlock : public RepBlock {
 public:
  OREPABlock(int in, int out, int stride, int groups, engine::Rng& rng);
  KernelBias kernel_bias(BnStatistics& stats) override;
  bool has_identity() const override { return false; }  // id_tensor is idconv1's init, not an identity branch
  Tensor merged_kernel() const;  // M [O, I/g, 3, 3] before the BN (official weight_gen)

  static constexpr int kExpand = 8;  // the dws branch's expand_ratio
  // Registered in the official order: the parameters, the buffers, then bn.
  Tensor weight_orepa_origin, weight_orepa_avg_conv, weight_orepa_pfir_conv, weight_orepa_1x1,
      weight_orepa_1x1_kxk_idconv1, weight_orepa_1x1_kxk_conv2, weight_orepa_gconv_dw, weight_orepa_gconv_pw,
      vector;
  Tensor weight_orepa_avg_avg, id_tensor, weight_orepa_prior;  // fixed
  std::shared_ptr<BatchNorm2d> bn;

 private:
  Tensor forward_branches(const Tensor& x) override;
  void drop_branches() override;
};

}  // namespace layers
