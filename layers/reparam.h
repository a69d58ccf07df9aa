// Structural re-parameterization: a block's training-time branches merged into one 3x3 conv with bias.
// Written with differentiable tensor ops, so that the merged kernel is a function of the branch
// parameters that gradients flow through (QAT on the merged weight).
#pragma once
#include "engine/tensor.h"

namespace layers {

using engine::Tensor;

struct KernelBias {
  Tensor kernel;  // [O, I/groups, 3, 3]
  Tensor bias;    // [O]
};

// A BN's tensors as the merge needs them: gamma as the forward uses it (OABN-clipped where on), beta,
// and the running statistics.
struct BnTensors {
  Tensor gamma, beta, mean, var;  // [C]
  float eps = 1e-5f;
};

// t = γ/sqrt(σ² + ε) [C]: the factor a BN folds into the kernel before it (RepVGG Eq. (3)).
Tensor bn_scale(const BnTensors& bn);

// RepVGG (Ding et al. 2021) Sec. 3.3, Eq. (3)-(4): bn(x ∗ W) = x ∗ W' + b' with
//     W' = W · γ/sqrt(σ² + ε),   b' = β − μ · γ/sqrt(σ² + ε)          (running μ, σ²)
// kernel [O, I, kh, kw] -> {[O, I, kh, kw], [O]}.
KernelBias fold_bn(const Tensor& kernel, const BnTensors& bn);

// bn(x ∗ W + b) = x ∗ W' + b' with W' = W · t, b' = β + (b − μ) · t, t = γ/sqrt(σ² + ε): the same fold
// for a conv that has a bias (QARepVGG's BN after the branch sum).
KernelBias fold_bn(const KernelBias& kb, const BnTensors& bn);

// The identity map as a 3x3 kernel [C, C/groups, 3, 3]: 1 at [i, i % (C/groups), 1, 1], else 0. Made once
// per (channels, groups, device) and shared: never write into it.
Tensor identity_kernel(int64_t channels, int groups, engine::Device device = engine::Device::cpu);

// RepVGG Sec. 3.3, Eq. (1) merged (OABN paper Fig. 2): the 3x3 conv+BN, the 1x1 conv+BN (zero-padded
// to 3x3) and the identity BN (when `identity` is given) each fold, and kernels and biases add up:
//     W = W'₃ + pad(W'₁) + W'_id,   b = b'₃ + b'₁ + b'_id
// k3 [O, I/g, 3, 3], k1 [O, I/g, 1, 1].
KernelBias merge_repvgg(const Tensor& k3, const BnTensors& bn3, const Tensor& k1, const BnTensors& bn1,
                        const BnTensors* identity, int groups);

// QARepVGG (Chu et al. 2023) S4 block: bn(x ∗ W'₃ + b'₃ + x ∗ K₁ + x) with no BN on the 1x1 and identity.
// The kernel and bias of the branch sum, the post-sum BN's input:  W = W'₃ + pad(K₁) + I,  b = b'₃
KernelBias qarepvgg_sum(const Tensor& k3, const BnTensors& bn3, const Tensor& k1, bool identity, int groups);
// ... and with the post-sum BN folded:  fold_bn(qarepvgg_sum(...), bn)
KernelBias merge_qarepvgg(const Tensor& k3, const BnTensors& bn3, const Tensor& k1, bool identity, int groups,
                          const BnTensors& bn);

}  // namespace layers
