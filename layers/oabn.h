// OABN, "outlier-aware batch normalization" (Niu et al. 2024, arXiv 2402.07200, Algorithm 1).
// A RepVGG block's identity-branch BN becomes the identity kernel scaled by γ / sqrt(σ² + ε) when the
// branches merge (layers/reparam.h), so a large |γ| there is a large outlier of the deploy kernel. OABN
// bounds it during training: the forward pass uses
//     γ̂ = clip(γ, −K·σ², K·σ²)                   (the clip, per channel)
//     γ_used = γ + sg(γ̂ − γ)                      (lines 5-6: value γ̂, gradient straight through to γ)
// with sg the stop-gradient (detach). The deploy merge folds γ_used, so the deploy conv reproduces the
// trained model's eval output.
//
// σ² is the BN's running variance, as it is at the start of the forward (before this step's momentum
// update): it is what the merged deploy kernel divides by, and it is the same in training and in eval,
// so the bound the model trains under is the bound it is deployed with. The batch variance would make
// the bound change from one mini-batch to the next (noisy per step), and it does not exist at deploy.
#pragma once
#include "engine/tensor.h"

namespace layers {

// gamma, running_var [C], k > 0 -> γ_used [C] (see above). running_var is read, not recorded.
engine::Tensor oabn_clip_gamma(const engine::Tensor& gamma, const engine::Tensor& running_var, float k);

}  // namespace layers
