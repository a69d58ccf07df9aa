// torchvision's ResNet-18 (torchvision/models/resnet.py: ResNet, BasicBlock, layers [2, 2, 2, 2]) with each 3x3
// conv and its BN one block of the arch's type: plain (torchvision's own), ACNet's ACB or OREPA's
// (AC-ResNet-18 and OREPA-ResNet-18 of the RepQ paper's Table 2); the CIFAR variant with a 3x3 stem and no
// max pool. Module names are torchvision's, each conv+BN pair one block: "conv1" (conv1, bn1), "layer1.0.conv1"
// (conv1, bn1), "layer1.0.conv2" (conv2, bn2), "layer2.0.downsample" (downsample.0, .1), "fc"; inside a block its
// own names (a plain block's "conv.weight", "bn.*").
#pragma once
#include <memory>

#include "engine/random.h"
#include "models/model.h"

namespace models {

// torchvision's BasicBlock: ReLU(bn2(conv2(ReLU(bn1(conv1(x))))) + shortcut(x)), the shortcut x itself or
// downsample(x), a 1x1 conv+BN of the block's stride. The blocks conv2 and downsample have no ReLU of their own.
//
// Quantized, x is one tensor with one quantizer, conv1's Q_a: the downsample reads Q_a(x) (its Q_a is conv1's)
// and so does the identity shortcut, as an integer model holds x's codes once for all three readers.
class BasicBlock : public layers::Module {
 public:
  BasicBlock(std::shared_ptr<layers::RepBlock> conv1, std::shared_ptr<layers::RepBlock> conv2,
             std::shared_ptr<layers::RepBlock> downsample);
  Tensor forward(const Tensor& x) override;  // [N, C, H, W] -> [N, O, H / s, W / s]

  std::shared_ptr<layers::RepBlock> conv1, conv2, downsample;  // downsample null without one
};

class ResNet : public Model {
 public:
  ResNet(const ArchConfig& arch, engine::Rng& rng, float oabn_k = 0);
  Tensor forward(const Tensor& x) override;  // [N, 3, H, W] -> [N, num_classes]

  std::shared_ptr<layers::RepBlock> stem;   // "conv1"
  std::vector<std::shared_ptr<BasicBlock>> basic_blocks;  // layer1.0, layer1.1, ..., layer4.1
};

}  // namespace models
