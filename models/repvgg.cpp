#include "models/repvgg.h"

#include <fmt/format.h>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/safetensors.h"

namespace models {

using namespace engine;

RepVGG::RepVGG(const ArchConfig& a, Rng& rng, float oabn_k) : Model(a, oabn_k) {
  ENGINE_CHECK(a.family == Family::repvgg, a.name + " is not a RepVGG arch");
  register_module(specs[0].name, make_block(0, rng));
  for (int s = 1; s <= 4; s++) {  // stage s: a Sequential whose i-th block is named "stage{s}.{i}" (LayerSpec::name)
    auto seq = register_module("stage" + std::to_string(s), std::make_shared<layers::Sequential>());
    for (size_t i = 1; i + 1 < specs.size(); i++)
      if (specs[i].stage == s) seq->push_back(make_block(i, rng));
  }
  make_fc(rng);
}

Tensor RepVGG::forward(const Tensor& x) {
  Tensor y = x;
  for (const auto& block : blocks()) y = block->forward(y);
  return classify(y);
}

// t = γ/sqrt(σ² + ε) of the BN's own γ (not OABN's clipped one) as [O, 1, 1, 1], detached
static Tensor bn_scale_detached(const layers::BatchNorm2d& bn) {
  NoGradGuard no_grad;
  Tensor t = layers::bn_scale({bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.eps});
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

Tensor custom_l2(const Model& model) {
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
