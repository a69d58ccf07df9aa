#include "layers/layer_quantizers.h"

namespace layers {

void LayerQuantizers::set(std::shared_ptr<Quantizer> a, std::shared_ptr<Quantizer> w, std::shared_ptr<ClusterQuantizer> c) {
  ENGINE_CHECK(!w || !c, "a layer has one weight quantizer, uniform or cluster");
  if (act && !act_shared_) owner_.remove_module(prefix_ + "act_quant");
  act_shared_ = false;
  if (weight || cluster) owner_.remove_module(prefix_ + "weight_quant");
  act = a ? owner_.register_module(prefix_ + "act_quant", a) : nullptr;
  weight = w ? owner_.register_module(prefix_ + "weight_quant", w) : nullptr;
  cluster = c ? owner_.register_module(prefix_ + "weight_quant", c) : nullptr;
}

void LayerQuantizers::share_input(std::shared_ptr<Quantizer> a) {
  if (act && !act_shared_) owner_.remove_module(prefix_ + "act_quant");
  act = std::move(a);
  act_shared_ = act != nullptr;
}

Tensor LayerQuantizers::quantize_input(const Tensor& x) const { return act ? act->forward(x) : x; }

Tensor LayerQuantizers::quantize_weight(const Tensor& w) const {
  return weight ? weight->forward(w) : cluster ? cluster->forward(w) : w;
}

Tensor LayerQuantizers::quantized_bias(const Tensor& b, bool training) const {
  return eval_bias(b, act.get(), weight.get(), training, "layer " + layer + " bias");
}

}  // namespace layers
