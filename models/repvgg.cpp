#include "models/repvgg.h"

#include "engine/autograd.h"
#include "engine/ops.h"

namespace models {

using namespace engine;

namespace {

struct Entry {
  const char* name;
  std::array<int, 4> num_blocks;
  std::array<double, 4> width_multiplier;
  int groups;
};

// The official model list (repvgg.py func_dict, without the SE model D2se).
const Entry kImagenet[] = {
    {"a0", {2, 4, 14, 1}, {0.75, 0.75, 0.75, 2.5}, 1},  {"a1", {2, 4, 14, 1}, {1, 1, 1, 2.5}, 1},
    {"a2", {2, 4, 14, 1}, {1.5, 1.5, 1.5, 2.75}, 1},    {"b0", {4, 6, 16, 1}, {1, 1, 1, 2.5}, 1},
    {"b1", {4, 6, 16, 1}, {2, 2, 2, 4}, 1},             {"b1g2", {4, 6, 16, 1}, {2, 2, 2, 4}, 2},
    {"b1g4", {4, 6, 16, 1}, {2, 2, 2, 4}, 4},           {"b2", {4, 6, 16, 1}, {2.5, 2.5, 2.5, 5}, 1},
    {"b2g2", {4, 6, 16, 1}, {2.5, 2.5, 2.5, 5}, 2},     {"b2g4", {4, 6, 16, 1}, {2.5, 2.5, 2.5, 5}, 4},
    {"b3", {4, 6, 16, 1}, {3, 3, 3, 5}, 1},             {"b3g2", {4, 6, 16, 1}, {3, 3, 3, 5}, 2},
    {"b3g4", {4, 6, 16, 1}, {3, 3, 3, 5}, 4},
};

const char* prefix(BlockType b) { return b == BlockType::repvgg ? "repvgg-" : "qarepvgg-"; }

}  // namespace

const std::vector<std::string>& arch_names() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> v;
    for (BlockType b : {BlockType::repvgg, BlockType::qarepvgg}) {
      for (const Entry& e : kImagenet) v.push_back(std::string(prefix(b)) + e.name);
      v.push_back(std::string(prefix(b)) + "cifar");
    }
    return v;
  }();
  return names;
}

// The OABN paper's CIFAR-10 model (its Table 1): stage0 3 -> 64 stride 1, stages of 4, 8, 12, 1 blocks
// all 64 wide, 10 classes.
ArchConfig cifar_config(BlockType block, int width) {
  ArchConfig a;
  a.name = std::string(prefix(block)) + "cifar";
  a.block = block;
  a.num_blocks = {4, 8, 12, 1};
  a.width_multiplier = {width / 64.0, width / 128.0, width / 256.0, width / 512.0};
  a.stage0_stride = 1;
  a.num_classes = 10;
  a.resolution = 32;
  return a;
}

ArchConfig arch_config(const std::string& name) {
  for (BlockType b : {BlockType::repvgg, BlockType::qarepvgg}) {
    const std::string p = prefix(b);
    if (name.rfind(p, 0) != 0) continue;
    const std::string rest = name.substr(p.size());
    if (rest == "cifar") return cifar_config(b, 64);
    for (const Entry& e : kImagenet)
      if (rest == e.name) return ArchConfig{name, b, e.num_blocks, e.width_multiplier, e.groups, 2, 1000, 224};
  }
  std::string known;
  for (auto& n : arch_names()) known += (known.empty() ? "" : ", ") + n;
  fail("unknown arch '" + name + "'; known: " + known);
}

std::vector<std::vector<BlockSpec>> block_specs(const ArchConfig& a) {
  const int base[4] = {64, 128, 256, 512};
  int in = std::min(64, (int)(64 * a.width_multiplier[0]));
  std::vector<std::vector<BlockSpec>> stages = {{{3, in, a.stage0_stride, 1}}};
  int layer = 1;
  for (int s = 0; s < 4; s++) {
    const int out = (int)(base[s] * a.width_multiplier[s]);
    stages.emplace_back();
    for (int i = 0; i < a.num_blocks[s]; i++, layer++) {
      const int groups = layer % 2 == 0 && layer <= 26 ? a.groups : 1;  // official optional_groupwise_layers
      stages.back().push_back({in, out, i == 0 ? 2 : 1, groups});
      in = out;
    }
  }
  return stages;
}

ModelSize model_size(const ArchConfig& a, bool deploy, int resolution) {
  ModelSize s;
  int64_t h = resolution, w = resolution;
  int last = 0;
  for (auto& stage : block_specs(a)) {
    for (const BlockSpec& b : stage) {
      h = (h - 1) / b.stride + 1;  // 3x3 with padding 1 and 1x1 with padding 0 give the same size
      w = (w - 1) / b.stride + 1;
      const int64_t k3 = (int64_t)b.out * (b.in / b.groups) * 9, k1 = (int64_t)b.out * (b.in / b.groups);
      const bool identity = b.in == b.out && b.stride == 1;
      if (deploy) {
        s.params += k3 + b.out;
        s.macs += h * w * k3;
      } else {
        s.macs += h * w * (k3 + k1);
        if (a.block == BlockType::repvgg) s.params += k3 + 2 * b.out + k1 + 2 * b.out + (identity ? 2 * b.in : 0);
        else s.params += k3 + 2 * b.out + k1 + 2 * b.out;
      }
      last = b.out;
    }
  }
  s.params += (int64_t)last * a.num_classes + a.num_classes;
  s.macs += (int64_t)last * a.num_classes;
  return s;
}

RepVGG::RepVGG(const ArchConfig& a, Rng& rng, float oabn_k) : arch(a), oabn_k(oabn_k) {
  ENGINE_CHECK(oabn_k <= 0 || a.block == BlockType::repvgg,
               a.name + ": OABN clips the identity-branch BN, which QARepVGG blocks do not have");
  auto make = [&](const BlockSpec& b) -> std::shared_ptr<layers::RepBlock> {
    if (a.block == BlockType::qarepvgg)
      return std::make_shared<layers::QARepVGGBlock>(b.in, b.out, b.stride, b.groups, rng);
    auto block = std::make_shared<layers::RepVGGBlock>(b.in, b.out, b.stride, b.groups, rng);
    if (block->rbr_identity && oabn_k > 0) block->rbr_identity->oabn_k = oabn_k;
    return block;
  };
  auto stages = block_specs(a);
  blocks_.push_back(register_module("stage0", make(stages[0][0])));
  for (int s = 1; s <= 4; s++) {
    auto seq = register_module("stage" + std::to_string(s), std::make_shared<layers::Sequential>());
    for (const BlockSpec& b : stages[s]) {
      blocks_.push_back(make(b));
      seq->push_back(blocks_.back());
    }
  }
  linear_ = register_module("linear", std::make_shared<layers::Linear>(stages[4].back().out, a.num_classes, rng));
}

// Whether the blocks can run in the blocked layout (ops.h to_blocked): channel counts, per group too, that
// are multiples of 16 (stage0's input excepted: forward_blocked takes it plain), and no QARepVGG block in
// training form (its BN of a sum is batch_norm2d's, plain only).
static bool blocked_layout_fits(const std::vector<std::shared_ptr<layers::RepBlock>>& blocks) {
  for (size_t i = 0; i < blocks.size(); i++) {
    const layers::RepBlock& b = *blocks[i];
    if (!b.deployed() && !dynamic_cast<const layers::RepVGGBlock*>(&b)) return false;
    if (b.out_channels % (kChannelBlock * b.groups) != 0) return false;
    if (i > 0 && b.in_channels % (kChannelBlock * b.groups) != 0) return false;
  }
  return true;
}

Tensor RepVGG::forward(const Tensor& x) {
  // On the CPU the blocks run in oneDNN's blocked layout, from stage0's output on: no reorders around
  // their convolutions.
  const bool blocked = x.device() == Device::cpu && blocked_layout_fits(blocks_);
  Tensor y = blocked ? blocks_[0]->forward_blocked(x) : blocks_[0]->forward(x);
  for (size_t i = 1; i < blocks_.size(); i++) y = blocks_[i]->forward(y);
  if (blocked) y = to_plain(y);
  return linear_->forward(global_avg_pool(y));
}

// t = γ/sqrt(σ² + ε) as [O, 1, 1, 1], detached
static Tensor bn_scale_detached(const layers::BatchNorm2d& bn) {
  NoGradGuard no_grad;
  Tensor t = mul(bn.weight, rsqrt(add_scalar(bn.running_var, bn.eps)));
  return reshape(t, Shape{t.size(0), 1, 1, 1});
}

Tensor custom_l2(const layers::RepVGGBlock& b) {
  ENGINE_CHECK(!b.deployed(), "custom L2 of a block in deploy form");
  const Tensor& k3 = b.rbr_dense->conv->weight;  // [O, I/g, 3, 3]
  const Tensor& k1 = b.rbr_1x1->conv->weight;    // [O, I/g, 1, 1]
  const Tensor t3 = bn_scale_detached(*b.rbr_dense->bn), t1 = bn_scale_detached(*b.rbr_1x1->bn);
  std::vector<float> c(9, 0.0f), r(9, 1.0f);
  c[4] = 1.0f;
  r[4] = 0.0f;
  const Tensor centre_mask = Tensor::from_vector(c, Shape{1, 1, 3, 3}).to(k3.device());
  const Tensor ring_mask = Tensor::from_vector(r, Shape{1, 1, 3, 3}).to(k3.device());
  // Σ K₃² − Σ K₃[:, :, 1, 1]², as the sum over the 8 outer taps
  Tensor circle = sum_all(square(mul(k3, ring_mask)));
  Tensor centre = sum(mul(k3, centre_mask), {2, 3}, true);  // K₃[:, :, 1, 1] [O, I/g, 1, 1]
  Tensor eq = add(mul(centre, t3), mul(k1, t1));
  return add(sum_all(div(square(eq), add(square(t3), square(t1)))), circle);
}

Tensor custom_l2(const RepVGG& model) {
  ENGINE_CHECK(model.arch.block == BlockType::repvgg, model.arch.name + ": the custom L2 is defined for RepVGG blocks");
  Tensor total;
  for (auto& b : model.blocks()) {
    Tensor l2 = custom_l2(static_cast<const layers::RepVGGBlock&>(*b));
    total = total.defined() ? add(total, l2) : l2;
  }
  return total;
}

bool covered_by_custom_l2(const std::string& name) {
  return name.find("rbr_dense.") != std::string::npos || name.find("rbr_1x1.") != std::string::npos;
}

}  // namespace models
