#include "quant/quant_model.h"

#include <map>

#include "engine/ops.h"

namespace quant {

QuantLayer::QuantLayer(std::string name, Tensor weight, Tensor bias)
    : name(std::move(name)), fp32_weight(weight), bias(bias), weight(weight) {}

void QuantLayer::set_fp32() {
  weight = fp32_weight;
  act.reset();
}

void QuantLayer::set_quantized(int weight_bits, Granularity g, const AffineQuant& a) {
  weight = fake_quant_weight(fp32_weight, weight_bits, g);
  act = a;
}

Tensor QuantLayer::input(const Tensor& x) {
  if (observer) observer->observe(x);
  return act ? fake_quant_activation(x, *act) : x;
}

QuantBlock::QuantBlock(std::string name, const layers::RepBlock& block)
    : QuantLayer(std::move(name), block.rbr_reparam->weight, block.rbr_reparam->bias),
      stride(block.rbr_reparam->stride),
      padding(block.rbr_reparam->padding),
      groups(block.rbr_reparam->groups) {}

Tensor QuantBlock::forward(const Tensor& x) {
  return engine::relu(engine::conv2d(input(x), weight, bias, stride, padding, groups));
}

QuantLinear::QuantLinear(std::string name, const layers::Linear& fc) : QuantLayer(std::move(name), fc.weight, fc.bias) {}

Tensor QuantLinear::forward(const Tensor& x) { return engine::linear(input(x), weight, bias); }

QuantNet::QuantNet(models::RepVGG& model) {
  std::map<const layers::Module*, std::string> names;
  const layers::Linear* fc = nullptr;
  for (auto& [name, m] : model.modules()) {
    names[m] = name;
    if (name == "linear") fc = dynamic_cast<const layers::Linear*>(m);
  }
  ENGINE_CHECK(fc, "the model has no 'linear' module");
  for (auto& b : model.blocks()) {
    ENGINE_CHECK(b->deployed(), "block " + names[b.get()] + " is not in deploy form: call switch_to_deploy() first");
    blocks_.push_back(std::make_shared<QuantBlock>(names[b.get()], *b));
    layers_.push_back(blocks_.back().get());
  }
  fc_ = std::make_shared<QuantLinear>("linear", *fc);
  layers_.push_back(fc_.get());
}

Tensor QuantNet::forward(const Tensor& x) {
  Tensor y = x;
  for (auto& b : blocks_) y = b->forward(y);
  return fc_->forward(engine::global_avg_pool(y));
}

void QuantNet::attach_observers(std::vector<ActObserver>* observers) {
  ENGINE_CHECK(!observers || observers->size() == layers_.size(),
               std::to_string(observers ? observers->size() : 0) + " observers for " + std::to_string(layers_.size()) + " layers");
  for (size_t i = 0; i < layers_.size(); i++) layers_[i]->observer = observers ? &(*observers)[i] : nullptr;
}

void QuantNet::set_fp32() {
  for (QuantLayer* l : layers_) l->set_fp32();
}

bool QuantNet::quantizes(size_t layer, const QuantConfig& c) const {
  return c.quantize_first_last || (layer != 0 && layer + 1 != layers_.size());
}

std::vector<Range> QuantNet::quantize(const QuantConfig& c, const std::vector<ActObserver>& observers) {
  ENGINE_CHECK(observers.size() == layers_.size(),
               std::to_string(observers.size()) + " observers for " + std::to_string(layers_.size()) + " layers");
  std::vector<Range> ranges(layers_.size());
  for (size_t i = 0; i < layers_.size(); i++) {
    if (!quantizes(i, c)) {
      layers_[i]->set_fp32();
      continue;
    }
    ENGINE_CHECK(!observers[i].empty(), "layer " + layers_[i]->name + ": no calibration activations observed");
    ranges[i] = calibrate(observers[i], c.calib, c.act_bits);
    layers_[i]->set_quantized(c.weight_bits, c.granularity, asymmetric_params(ranges[i].lo, ranges[i].hi, c.act_bits));
  }
  return ranges;
}

}  // namespace quant
