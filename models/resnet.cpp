#include "models/resnet.h"

#include "engine/ops.h"

namespace models {

using namespace engine;

BasicBlock::BasicBlock(std::shared_ptr<layers::RepBlock> c1, std::shared_ptr<layers::RepBlock> c2,
                       std::shared_ptr<layers::RepBlock> ds) {
  conv1 = register_module("conv1", c1);
  conv2 = register_module("conv2", c2);
  if (ds) downsample = register_module("downsample", ds);
}

Tensor BasicBlock::forward(const Tensor& x) {
  Tensor out = conv2->forward(conv1->forward(x));
  Tensor shortcut = downsample ? downsample->forward(x) : conv1->quant.quantize_input(x);
  return relu(add(out, shortcut));
}

ResNet::ResNet(const ArchConfig& a, Rng& rng, float oabn_k) : Model(a, oabn_k) {
  ENGINE_CHECK(a.family == Family::resnet, a.name + " is not a ResNet arch");
  stem = register_module("conv1", make_block(0, rng));
  // the specs of each BasicBlock: conv1, [downsample], conv2 ("layer{s}.{i}.conv1", ...)
  for (int s = 1; s <= 4; s++) {
    auto layer = register_module("layer" + std::to_string(s), std::make_shared<layers::Sequential>());
    for (size_t i = 1; i + 1 < specs.size(); i++) {
      if (specs[i].stage != s || !specs[i].name.ends_with(".conv1")) continue;
      auto c1 = make_block(i, rng), ds = specs[i + 1].name.ends_with(".downsample") ? make_block(++i, rng) : nullptr;
      auto c2 = make_block(++i, rng);
      basic_blocks.push_back(std::make_shared<BasicBlock>(c1, c2, ds));
      layer->push_back(basic_blocks.back());
    }
  }
  make_fc(rng);
}

Tensor ResNet::forward(const Tensor& x) {
  Tensor y = stem->forward(x);
  if (specs[0].max_pool) y = max_pool2d(y, 3, 2, 1);
  for (const auto& b : basic_blocks) y = b->forward(y);
  return classify(y);
}

}  // namespace models
