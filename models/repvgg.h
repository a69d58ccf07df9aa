// RepVGG, QARepVGG, ACB and OREPA plain stacks (official DingXiaoH/RepVGG RepVGG class, its blocks RepVGG's,
// QARepVGG's, ACNet's ACB or OREPA's) of the archs models/arch.h lists, and RepVGG's custom L2.
#pragma once
#include <string>

#include "engine/random.h"
#include "layers/acnet_block.h"
#include "layers/orepa_block.h"
#include "layers/repvgg_block.h"
#include "models/model.h"

namespace models {

class RepVGG : public Model {
 public:
  // oabn_k > 0 turns on OABN (layers/oabn.h) on every identity-branch BN (RepVGG blocks only).
  RepVGG(const ArchConfig& arch, engine::Rng& rng, float oabn_k = 0);
  Tensor forward(const Tensor& x) override;  // [N, 3, H, W] -> [N, num_classes]
};

// RepVGG's custom L2 (official get_custom_L2), for one training-form RepVGG block:
//     l2 = Σ K₃² − Σ K₃[:, :, 1, 1]² + Σ eq² / (t₃² + t₁²),   eq = K₃[:, :, 1, 1]·t₃ + K₁·t₁
// with t₃, t₁ = γ/sqrt(σ² + ε) of the 3x3 and 1x1 BNs (running σ², detached). The trainer adds
// wd/2 · Σ_blocks l2 to the loss and turns plain decay off for the parameters it covers.
Tensor custom_l2(const layers::RepVGGBlock& block);
Tensor custom_l2(const Model& model);  // the sum over the blocks; RepVGG blocks only
// Whether a parameter's plain weight decay is replaced by the custom L2 (the branch convs and BNs).
bool covered_by_custom_l2(const std::string& param_name);

}  // namespace models
