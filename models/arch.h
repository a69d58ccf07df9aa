// The RepVGG family as a description, with no layers (official DingXiaoH/RepVGG model list, the OABN paper's
// CIFAR-10 model), in each of four blocks (RepVGG, QARepVGG, ACNet's ACB, OREPA's): each block's shape and name,
// and the sizes computed from them. models/repvgg.h builds
// the models from it; deploy/ lays out an integer model's layers by it without building one.
//
//   stage0: one block 3 -> min(64, int(64 a)), stride 2 (1 for cifar)
//   stage1..4: int(64 a), int(128 a), int(256 a), int(512 b) wide, num_blocks[i] blocks each, the first
//     of each stride 2; blocks numbered from 1 (stage0 is layer 0), groups on the layers 2, 4, ..., 26
//   global average pooling, linear(int(512 b) -> num_classes)
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace models {

// The block of every layer: RepVGGBlock, QARepVGGBlock (layers/repvgg_block.h), ACBlock
// (layers/acnet_block.h: ACNet's 3x3 + 1x3 + 3x1, each with a BN; the plain stack ACNet evaluates on CIFAR) or
// OREPABlock (layers/orepa_block.h: OREPA's six linear branches merged online into one conv, then one BN; the
// official code's RepVGG models with CONV_BN_IMPL = 'OREPA').
enum class BlockType { repvgg, qarepvgg, acb, orepa };

struct ArchConfig {
  std::string name;  // "repvgg-a0", ..., "qarepvgg-cifar", ..., "acb-cifar", "orepa-cifar"
  BlockType block = BlockType::repvgg;
  std::array<int, 4> num_blocks{};
  std::array<double, 4> width_multiplier{};  // a, a, a, b (the CIFAR model: width / 64, / 128, / 256, / 512)
  int groups = 1;                            // on the layers 2, 4, ..., 26 (the g2 and g4 models)
  int stage0_stride = 2;
  int num_classes = 1000;
  int resolution = 224;                      // the input size its MACs are quoted at
};

// The names of all archs, in the official list's order: repvgg-a0 ... repvgg-b3g4, repvgg-cifar, then
// the same with qarepvgg-, with acb- and with orepa-.
const std::vector<std::string>& arch_names();
ArchConfig arch_config(const std::string& name);  // throws for an unknown name, listing the known ones
// The CIFAR model at another width (every stage `width` channels), e.g. for small reference tests.
ArchConfig cifar_config(BlockType block, int width);

struct BlockSpec {
  int in, out, stride, groups;
  std::string name;  // the model's name for the block (its state-dict prefix): "stage0", "stage1.0", ...
};
// [stage][block]; stage 0 has one block.
std::vector<std::vector<BlockSpec>> block_specs(const ArchConfig& arch);

struct ModelSize {
  int64_t params = 0;  // learnable parameters (BN running statistics are buffers, not counted)
  int64_t macs = 0;    // conv and linear multiply-accumulates for one image
};
// From the block specs alone, without building the model.
ModelSize model_size(const ArchConfig& arch, bool deploy, int resolution);

}  // namespace models
