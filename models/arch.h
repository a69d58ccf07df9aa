// The models as descriptions, with no layers: the RepVGG family (official DingXiaoH/RepVGG model list, the OABN
// paper's CIFAR-10 model) in each of four blocks (RepVGG, QARepVGG, ACNet's ACB, OREPA's), and torchvision's
// ResNet-18 with plain, ACB or OREPA 3x3s: each layer's shape, name and connections, and the sizes computed from
// them. models/model.h builds the models from it; deploy/ lays out an integer model's layers by it without
// building one.
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace models {

// The block of every 3x3 layer: RepVGGBlock, QARepVGGBlock (layers/repvgg_block.h), ACBlock
// (layers/acnet_block.h: ACNet's 3x3 + 1x3 + 3x1, each with a BN; the plain stack ACNet evaluates on CIFAR),
// OREPABlock (layers/orepa_block.h: OREPA's six linear branches merged online into one conv, then one BN; the
// official code's RepVGG models with CONV_BN_IMPL = 'OREPA') or ConvBNBlock (layers/conv_bn_block.h: one conv
// and its BN, ResNet's own layers).
enum class BlockType { repvgg, qarepvgg, acb, orepa, plain };

// How the layers connect:
//   repvgg  RepVGG's plain stack (official DingXiaoH/RepVGG RepVGG class):
//             stage0: one block 3 -> min(64, int(64 a)), stride 2 (1 for cifar)
//             stage1..4: int(64 a), int(128 a), int(256 a), int(512 b) wide, num_blocks[i] blocks each, the
//             first of each stride 2; blocks numbered from 1 (stage0 is layer 0), groups on the layers 2, 4, ..., 26
//             global average pooling, linear(int(512 b) -> num_classes)
//   resnet  torchvision's ResNet-18 (resnet.py, BasicBlock, [2, 2, 2, 2]):
//             conv1: 7x7 stride 2, BN, ReLU, 3x3 max pool stride 2 (ImageNet); 3x3 stride 1, no pool (cifar)
//             layer1..4: w, 2w, 4w, 8w wide (w = 64, or the -wN variant's N), two BasicBlocks each, the first of
//             layers 2..4 stride 2 with a 1x1 conv+BN downsample on its shortcut:
//               out = ReLU(bn2(conv2(ReLU(bn1(conv1(x))))) + shortcut(x))
//             global average pooling, fc(8w -> num_classes)
//           Each 3x3 conv with its BN is one block of the arch's type (plain: torchvision's conv and BN); the
//           ImageNet stem's 7x7 and the 1x1 shortcuts are always plain.
enum class Family { repvgg, resnet };

struct ArchConfig {
  std::string name;  // "repvgg-a0", ..., "acb-cifar", "orepa-cifar", "resnet18", "acb-resnet18-cifar", ...
  BlockType block = BlockType::repvgg;
  Family family = Family::repvgg;
  std::array<int, 4> num_blocks{};
  std::array<double, 4> width_multiplier{};  // repvgg: a, a, a, b (the CIFAR model: width / 64, / 128, / 256,
                                             // / 512); resnet: w / 64 for every stage
  int groups = 1;                            // on the layers 2, 4, ..., 26 (the g2 and g4 models)
  int stage0_stride = 2;                     // resnet: 2 is the ImageNet stem (7x7 and the max pool)
  int num_classes = 1000;
  int resolution = 224;                      // the input size its MACs are quoted at
};

// The names of all archs: the official RepVGG list's order repvgg-a0 ... repvgg-b3g4, repvgg-cifar, then the
// same with qarepvgg-, with acb- and with orepa-; then resnet18, resnet18-cifar and both with acb- and orepa-.
// A ResNet name also takes a width suffix, e.g. "acb-resnet18-cifar-w16" (stages 16, 32, 64, 128 wide).
const std::vector<std::string>& arch_names();
ArchConfig arch_config(const std::string& name);  // throws for an unknown name, listing the known ones
// The CIFAR model at another width (every stage `width` channels), e.g. for small reference tests.
ArchConfig cifar_config(BlockType block, int width);
// torchvision's ResNet-18 of `block` at base width `width` (64: the standard one), ImageNet or CIFAR.
ArchConfig resnet18_config(BlockType block, bool cifar, int width = 64);

// One layer that quantization acts on, in the model's order: a block (a conv with its BN or branches) or
// the FC, and how it connects. Each layer's output is one tensor; every tensor is one layer's output.
struct LayerSpec {
  std::string name;   // its state-dict prefix: "stage0", "stage1.0", ... | "conv1", "layer1.0.conv1",
                      // "layer2.0.downsample", ...; the FC "linear" (repvgg) or "fc" (resnet)
  int in = 0, out = 0, stride = 1, groups = 1;  // channels (the FC: features)
  int kernel = 3;     // its deploy conv's k x k, padding (k − 1) / 2; the FC: 1
  BlockType block = BlockType::repvgg;  // its block (unused for the FC)
  bool fc = false;    // the FC, after global average pooling of its source
  bool relu = true;   // ReLU last (after the residual add); ResNet's conv2 before the add and shortcut: none
  int source = -1;    // the layer whose output it reads, -1: the image
  int residual = -1;  // the layer whose output it adds before the ReLU (ResNet's shortcut), -1: none
  bool max_pool = false;  // torchvision's 3x3 stride-2 max pool (padding 1) after the ReLU (the ImageNet stem)
  int stage = 0;      // 0: the stem; 1..4
};
// Every layer, the FC last; a layer's source and residual come before it.
std::vector<LayerSpec> layer_specs(const ArchConfig& arch);
// The first layer that reads layer i's input (i itself, but for ResNet's downsample: its block's conv1). A
// tensor has one activation quantizer, its first reader's, which the other readers share.
template <class Layer> size_t input_owner(const std::vector<Layer>& layers, size_t i) {
  for (size_t k = 0; k < i; k++)
    if (layers[k].source == layers[i].source) return k;
  return i;
}

struct ModelSize {
  int64_t params = 0;  // learnable parameters (BN running statistics are buffers, not counted)
  int64_t macs = 0;    // conv and linear multiply-accumulates for one image
};
// From the layer specs alone, without building the model.
ModelSize model_size(const ArchConfig& arch, bool deploy, int resolution);

}  // namespace models
