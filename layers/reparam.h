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

// A kernel [O, I, kh, kw] (kh, kw each 1 or 3) zero-padded, centred, to [O, I, 3, 3]: a 1x1 into the centre
// tap, ACNet's 1x3 into the middle row, its 3x1 into the middle column. Convolving x with the result and
// padding 1 is the kh x kw conv with padding ((kh − 1)/2, (kw − 1)/2), any stride: the added taps are zeros.
Tensor pad_to_3x3(const Tensor& kernel);

// ACNet (Ding et al., ICCV 2019) Sec. 3.3, the ACB (Asymmetric Convolution Block): a 3x3, a 1x3 and a 3x1
// conv, each with its BN, on the same input, summed. Converted to one 3x3 conv with bias in two steps:
//   BN fusion     each BN folds into the conv before it (fold_bn, RepVGG Eq. (3)-(4); ACNet writes the same
//                 fold per output channel j: K'⁽ʲ⁾ = γⱼ/σⱼ · K⁽ʲ⁾, b'ⱼ = βⱼ − μⱼγⱼ/σⱼ)
//   branch fusion by the additivity of convolution for kernels on compatible sliding windows, the thin
//                 kernels add onto the square kernel's skeleton (its middle row and column):
//     W = W'₃ₓ₃ + pad_to_3x3(W'₁ₓ₃) + pad_to_3x3(W'₃ₓ₁),   b = b'₃ₓ₃ + b'₁ₓ₃ + b'₃ₓ₁
// (official DingXiaoH/ACNet acb.py, get_equivalent_kernel_bias / _add_to_square_kernel).
// square [O, I/g, 3, 3], hor [O, I/g, 1, 3], ver [O, I/g, 3, 1]; differentiable in all of them and the BNs.
KernelBias merge_acb(const Tensor& square, const BnTensors& square_bn, const Tensor& hor, const BnTensors& hor_bn,
                     const Tensor& ver, const BnTensors& ver_bn);

// QARepVGG (Chu et al. 2023) S4 block: bn(x ∗ W'₃ + b'₃ + x ∗ K₁ + x) with no BN on the 1x1 and identity.
// The kernel and bias of the branch sum, the post-sum BN's input:  W = W'₃ + pad(K₁) + I,  b = b'₃
KernelBias qarepvgg_sum(const Tensor& k3, const BnTensors& bn3, const Tensor& k1, bool identity, int groups);
// ... and with the post-sum BN folded:  fold_bn(qarepvgg_sum(...), bn)
KernelBias merge_qarepvgg(const Tensor& k3, const BnTensors& bn3, const Tensor& k1, bool identity, int groups,
                          const BnTensors& bn);

}  // namespace layers
