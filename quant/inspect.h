// ./inspect: where the merged kernels' outliers are. For every block of a checkpoint's model: the merged
// 3x3 kernel's max|w|, std and max|w|/std; the mean |w| of its Class A, B and C positions (OABN paper
// Sec. 2.1); the largest identity-BN scale |γ|/sqrt(σ² + ε) (the outlier source the QARepVGG analysis
// names); and how far the deploy form's output is from the training form's on a batch.
#pragma once
#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "engine/tensor.h"
#include "layers/repvgg_block.h"

namespace quant {

using engine::Tensor;

// The positions of a merged kernel [O, I/g, 3, 3] by the branches that feed them (OABN paper Sec. 2.1):
//   A  the identity taps [i, i % (I/g), 1, 1], when the block has an identity branch: 3x3, 1x1 and identity
//   B  the other centre taps [:, :, 1, 1]: 3x3 and 1x1
//   C  the 8 non-centre taps of every [o, i]: 3x3 only
enum class TapClass : uint8_t { A = 0, B = 1, C = 2 };
// One class per kernel element, in the kernel's row-major order ([O, I/g, k, k] with I/g = in_per_group; a
// ResNet's 7x7 stem and 1x1 shortcuts have their centre tap as class B, the others C).
std::vector<TapClass> tap_classes(int64_t out, int64_t in_per_group, bool identity, int k = 3);

struct KernelStats {
  float max_abs = 0;
  float std = 0;                      // unbiased (n - 1), as torch.std
  float max_over_std = 0;
  std::array<double, 3> mean_abs{};   // per class A, B, C (0 where a class has no position)
  std::array<int64_t, 3> count{};
};
// kernel [O, I/g, k, k], k odd; identity: the block has an identity branch.
KernelStats kernel_stats(const Tensor& kernel, bool identity);

// max over channels of |γ| / sqrt(σ² + ε) of the block's identity BN (the OABN-clipped γ where OABN is on);
// none for a block without one (no identity branch, a QARepVGG block, or a deploy-form block).
std::optional<float> identity_bn_max_scale(const layers::RepBlock& block);

// The program: parses argv (without the program name), prints the table, writes --json and --hist.
// Returns 0; errors throw std::runtime_error naming the file.
int run_inspect(const std::vector<std::string>& args);
std::string inspect_help();

}  // namespace quant
