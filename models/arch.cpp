#include "models/arch.h"

#include <algorithm>
#include <cmath>
#include <optional>

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
const BlockType kResNetBlocks[] = {BlockType::plain, BlockType::acb, BlockType::orepa};

const char* prefix(BlockType b) {
  switch (b) {
    case BlockType::repvgg: return "repvgg-";
    case BlockType::qarepvgg: return "qarepvgg-";
    case BlockType::acb: return "acb-";
    case BlockType::orepa: return "orepa-";
    case BlockType::plain: return "";
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
    for (BlockType b : kResNetBlocks)
      for (const char* r : {"resnet18", "resnet18-cifar"}) v.push_back(prefix(b) + std::string(r));
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

ArchConfig resnet18_config(BlockType block, bool cifar, int width) {
  ArchConfig a;
  a.name = prefix(block) + std::string(cifar ? "resnet18-cifar" : "resnet18") + (width == 64 ? "" : "-w" + std::to_string(width));
  a.block = block;
  a.family = Family::resnet;
  a.num_blocks = {2, 2, 2, 2};
  a.width_multiplier.fill(width / 64.0);
  a.stage0_stride = cifar ? 1 : 2;
  a.num_classes = cifar ? 10 : 1000;
  a.resolution = cifar ? 32 : 224;
  return a;
}

// "[acb-|orepa-]resnet18[-cifar][-wN]", N 1..4096
static std::optional<ArchConfig> parse_resnet(const std::string& name) {
  for (BlockType b : kResNetBlocks) {
    const std::string p = prefix(b) + std::string("resnet18");
    if (name.rfind(p, 0) != 0) continue;
    std::string rest = name.substr(p.size());
    const bool cifar = rest.rfind("-cifar", 0) == 0;
    if (cifar) rest = rest.substr(6);
    int width = 64;
    if (!rest.empty()) {
      const std::string digits = rest.substr(rest.rfind("-w", 0) == 0 ? 2 : rest.size());
      if (digits.empty() || digits.size() > 4 || digits.find_first_not_of("0123456789") != std::string::npos) return std::nullopt;
      width = std::stoi(digits);
      if (width < 1) return std::nullopt;
    }
    return resnet18_config(b, cifar, width);
  }
  return std::nullopt;
}

ArchConfig arch_config(const std::string& name) {
  if (auto r = parse_resnet(name)) return *r;
  for (BlockType b : kBlocks) {
    const std::string p = prefix(b);
    if (name.rfind(p, 0) != 0) continue;
    const std::string rest = name.substr(p.size());
    if (rest == "cifar") return cifar_config(b, 64);
    for (const Entry& e : kImagenet)
      if (rest == e.name) return ArchConfig{name, b, Family::repvgg, e.num_blocks, e.width_multiplier, e.groups, 2, 1000, 224};
  }
  std::string known;
  for (auto& n : arch_names()) known += (known.empty() ? "" : ", ") + n;
  fail("unknown arch '" + name + "'; known: " + known + " (a ResNet also as e.g. resnet18-cifar-w16: base width 16)");
}

static std::vector<LayerSpec> repvgg_specs(const ArchConfig& a) {
  const int base[4] = {64, 128, 256, 512};
  int in = std::min(64, (int)(64 * a.width_multiplier[0]));
  std::vector<LayerSpec> specs;
  auto add = [&](LayerSpec l) {
    l.block = a.block;
    l.source = (int)specs.size() - 1;
    specs.push_back(l);
  };
  add({.name = "stage0", .in = 3, .out = in, .stride = a.stage0_stride});
  int layer = 1;
  for (int s = 0; s < 4; s++) {
    const int out = (int)(base[s] * a.width_multiplier[s]);
    for (int i = 0; i < a.num_blocks[s]; i++, layer++) {
      const int groups = layer % 2 == 0 && layer <= 26 ? a.groups : 1;  // official optional_groupwise_layers
      add({.name = "stage" + std::to_string(s + 1) + "." + std::to_string(i), .in = in, .out = out,
           .stride = i == 0 ? 2 : 1, .groups = groups, .stage = s + 1});
      in = out;
    }
  }
  add({.name = "linear", .in = in, .out = a.num_classes, .kernel = 1, .fc = true, .relu = false, .stage = 4});
  return specs;
}

// torchvision's ResNet-18: BasicBlock's conv1, its downsample (where there is one), conv2 (which adds the
// shortcut: the downsample's output, else the block's input)
static std::vector<LayerSpec> resnet_specs(const ArchConfig& a) {
  const int w = (int)std::lround(64 * a.width_multiplier[0]);
  const bool imagenet = a.stage0_stride == 2;
  std::vector<LayerSpec> specs;
  auto add = [&](LayerSpec l) {
    specs.push_back(l);
    return (int)specs.size() - 1;
  };
  int x = add({.name = "conv1", .in = 3, .out = w, .stride = a.stage0_stride, .kernel = imagenet ? 7 : 3,
               .block = imagenet ? BlockType::plain : a.block, .max_pool = imagenet});
  int in = w;
  for (int s = 0; s < 4; s++) {
    const int out = w << s;
    for (int i = 0; i < a.num_blocks[s]; i++) {
      const std::string name = "layer" + std::to_string(s + 1) + "." + std::to_string(i) + ".";
      const int stride = s > 0 && i == 0 ? 2 : 1;
      const int c1 = add({.name = name + "conv1", .in = in, .out = out, .stride = stride, .block = a.block, .source = x, .stage = s + 1});
      int shortcut = x;
      if (stride != 1 || in != out)
        shortcut = add({.name = name + "downsample", .in = in, .out = out, .stride = stride, .kernel = 1,
                        .block = BlockType::plain, .relu = false, .source = x, .stage = s + 1});
      x = add({.name = name + "conv2", .in = out, .out = out, .block = a.block, .source = c1, .residual = shortcut, .stage = s + 1});
      in = out;
    }
  }
  add({.name = "fc", .in = in, .out = a.num_classes, .kernel = 1, .fc = true, .relu = false, .source = x, .stage = 4});
  return specs;
}

std::vector<LayerSpec> layer_specs(const ArchConfig& a) {
  return a.family == Family::resnet ? resnet_specs(a) : repvgg_specs(a);
}

ModelSize model_size(const ArchConfig& a, bool deploy, int resolution) {
  ModelSize s;
  const std::vector<LayerSpec> specs = layer_specs(a);
  std::vector<int64_t> size(specs.size());  // each layer's output height (= width)
  for (size_t i = 0; i < specs.size(); i++) {
    const LayerSpec& b = specs[i];
    if (b.fc) {
      s.params += (int64_t)b.in * b.out + b.out;
      s.macs += (int64_t)b.in * b.out;
      continue;
    }
    // k x k with padding (k − 1) / 2 (ACB's 1x3 with (0, 1), 3x1 with (1, 0)): the same size for odd k
    const int64_t in_size = b.source < 0 ? resolution : size[b.source], h = (in_size - 1) / b.stride + 1;
    size[i] = b.max_pool ? (h - 1) / 2 + 1 : h;
    const int64_t taps = (int64_t)b.kernel * b.kernel, k = (int64_t)b.out * (b.in / b.groups) * taps, k1 = k / taps;
    const bool identity = b.in == b.out && b.stride == 1;
    if (deploy) {
      s.params += k + b.out;
      s.macs += h * h * k;
      continue;
    }
    // the convs as PyTorch runs them: ACB's thin ones beside the 3x3; OREPA's one conv on the merged kernel
    // (its merge is per step, not per image)
    s.macs += h * h * (k + (b.block == BlockType::acb ? 6 * k1 : b.block == BlockType::orepa || b.block == BlockType::plain ? 0 : k1));
    // OREPA's 1x1-kxk internal channels and dws expansion (layers::OREPABlock; the layers are not linked here)
    const int64_t t = b.groups <= 4 ? b.in : 2 * b.in, e = 8;
    switch (b.block) {
      case BlockType::repvgg: s.params += k + 2 * b.out + k1 + 2 * b.out + (identity ? 2 * b.in : 0); break;
      case BlockType::qarepvgg: s.params += k + 2 * b.out + k1 + 2 * b.out; break;
      case BlockType::acb: s.params += k + 2 * (3 * k1) + 3 * 2 * b.out; break;  // 3x3, 1x3, 3x1, three BNs
      case BlockType::orepa:  // origin, avg, prior and 1x1 convs; 1x1-kxk; dws; vector; the BN
        s.params += k + 3 * k1 + t * (b.in / b.groups) + (int64_t)b.out * (t / b.groups) * 9 + (int64_t)b.in * e * 9 +
                    (int64_t)b.out * (b.in * e / b.groups) + 6 * b.out + 2 * b.out;
        break;
      case BlockType::plain: s.params += k + 2 * b.out; break;  // conv, BN
    }
  }
  return s;
}

}  // namespace models
