#include "models/arch.h"

#include <algorithm>

#include "engine/tensor.h"

namespace models {

using engine::fail;

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

const BlockType kBlocks[] = {BlockType::repvgg, BlockType::qarepvgg, BlockType::acb, BlockType::orepa};

const char* prefix(BlockType b) {
  switch (b) {
    case BlockType::repvgg: return "repvgg-";
    case BlockType::qarepvgg: return "qarepvgg-";
    case BlockType::acb: return "acb-";
    case BlockType::orepa: return "orepa-";
  }
  fail("unknown block type " + std::to_string((int)b));
}

}  // namespace

const std::vector<std::string>& arch_names() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> v;
    for (BlockType b : kBlocks) {
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
  for (BlockType b : kBlocks) {
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
  std::vector<std::vector<BlockSpec>> stages = {{{3, in, a.stage0_stride, 1, "stage0"}}};
  int layer = 1;
  for (int s = 0; s < 4; s++) {
    const int out = (int)(base[s] * a.width_multiplier[s]);
    stages.emplace_back();
    for (int i = 0; i < a.num_blocks[s]; i++, layer++) {
      const int groups = layer % 2 == 0 && layer <= 26 ? a.groups : 1;  // official optional_groupwise_layers
      stages.back().push_back({in, out, i == 0 ? 2 : 1, groups, "stage" + std::to_string(s + 1) + "." + std::to_string(i)});
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
      h = (h - 1) / b.stride + 1;  // 3x3 with padding 1, 1x1 with 0, 1x3 with (0, 1), 3x1 with (1, 0): the same size
      w = (w - 1) / b.stride + 1;
      const int64_t k3 = (int64_t)b.out * (b.in / b.groups) * 9, k1 = (int64_t)b.out * (b.in / b.groups);
      const bool identity = b.in == b.out && b.stride == 1;
      if (deploy) {
        s.params += k3 + b.out;
        s.macs += h * w * k3;
      } else {
        // the convs as PyTorch runs them: ACB's thin ones beside the 3x3; OREPA's one conv on the merged kernel
        // (its merge is per step, not per image)
        s.macs += h * w * (k3 + (a.block == BlockType::acb ? 6 * k1 : a.block == BlockType::orepa ? 0 : k1));
        // OREPA's 1x1-kxk internal channels and dws expansion (layers::OREPABlock; the layers are not linked here)
        const int64_t t = b.groups <= 4 ? b.in : 2 * b.in, e = 8;
        switch (a.block) {
          case BlockType::repvgg: s.params += k3 + 2 * b.out + k1 + 2 * b.out + (identity ? 2 * b.in : 0); break;
          case BlockType::qarepvgg: s.params += k3 + 2 * b.out + k1 + 2 * b.out; break;
          case BlockType::acb: s.params += k3 + 2 * (3 * k1) + 3 * 2 * b.out; break;  // 3x3, 1x3, 3x1, three BNs
          case BlockType::orepa:  // origin, avg, prior and 1x1 convs; 1x1-kxk; dws; vector; the BN
            s.params += k3 + 3 * k1 + t * (b.in / b.groups) + (int64_t)b.out * (t / b.groups) * 9 + (int64_t)b.in * e * 9 +
                        (int64_t)b.out * (b.in * e / b.groups) + 6 * b.out + 2 * b.out;
            break;
        }
      }
      last = b.out;
    }
  }
  s.params += (int64_t)last * a.num_classes + a.num_classes;
  s.macs += (int64_t)last * a.num_classes;
  return s;
}

}  // namespace models
