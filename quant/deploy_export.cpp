#include "quant/deploy_export.h"

#include <fmt/format.h>

#include "deploy/cluster_file.h"
#include "layers/checkpoint.h"

namespace quant {

using deploy::Int8Layer;
using layers::Quantizer;

// The input side of a quantized layer: s_x and z_x.
static void set_input(Int8Layer& l, const Quantizer& act) {
  ENGINE_CHECK(act.bits <= 8, fmt::format("layer {}: {}-bit activations: integer export takes at most 8 bits", l.name, act.bits));
  const std::vector<float> s_x = act.step.to_vector();
  ENGINE_CHECK(s_x.size() == 1, "layer " + l.name + ": the input quantizer has a step per channel");
  deploy::set_input(l, s_x[0], act.zero_point, act.q_min);
}

// The codes of one quantized layer from its float weight and bias and its two uniform quantizers.
static void quantize_layer(Int8Layer& l, const models::QuantLayer& q) {
  const Quantizer& weight = *q.quant->weight;
  ENGINE_CHECK(weight.bits <= 8,
               fmt::format("layer {}: {}-bit weights: integer export takes at most 8 bits", l.name, weight.bits));
  ENGINE_CHECK(weight.q_min == -weight.q_max, "layer " + l.name + ": the weight codes are not symmetric");
  set_input(l, *q.quant->act);
  l.weight_scale = weight.step.to_vector();
  deploy::set_weight_codes(l, q.weight.to_vector(), weight.q_min, weight.q_max);
  l.bias_codes = layers::bias_codes(q.bias, *q.quant->act, weight, "layer " + l.name + " bias").codes;  // what eval adds
}

// A ClusterQAT layer: each weight is the codebook entry of its code, as eval computes it (deploy::set_cluster_codes).
static void quantize_cluster_layer(Int8Layer& l, const models::QuantLayer& q, const std::vector<float>* mean) {
  set_input(l, *q.quant->act);
  deploy::set_cluster_codes(l, q.quant->quantize_weight(q.weight).to_vector(), q.bias.to_vector(), mean);
}

Int8Model export_int8(models::Model& model, const std::string& method, const std::string& granularity,
                      const std::map<std::string, std::string>& metadata, const InputMeans& input_means) {
  Int8Model m;
  m.arch = model.arch;
  m.method = method;
  m.granularity = granularity;
  m.metadata = metadata;
  m.layers = deploy::int8_layers(model.arch);
  const std::vector<models::QuantLayer> layers = model.quant_layers();
  ENGINE_CHECK(layers.size() == m.layers.size(), "the model's layers do not match its arch");
  bool any = false;
  for (size_t i = 0; i < m.layers.size(); i++) {
    Int8Layer& l = m.layers[i];
    const models::QuantLayer& q = layers[i];
    ENGINE_CHECK(q.name == l.name, "layer " + q.name + " where " + l.name + " was expected");
    ENGINE_CHECK(q.weight.defined(), "block " + l.name + " is not in deploy form: call switch_to_deploy() first");
    const layers::LayerQuantizers& quant = *q.quant;
    ENGINE_CHECK(!quant.act == (!quant.weight && !quant.cluster),
                 "layer " + l.name + " has a quantizer for its input or its weight, not both");
    if (!quant.act) {
      l.weight = q.weight.to_vector(), l.bias = q.bias.to_vector();
      continue;
    }
    // a cluster layer's codes span the s8 range whatever its codebook's bits
    const int bits = quant.cluster ? 8 : quant.weight->bits;
    const auto mean = input_means.find(l.name);
    if (quant.cluster) quantize_cluster_layer(l, q, mean == input_means.end() ? nullptr : &mean->second);
    else quantize_layer(l, q);
    l.widths = {bits, quant.act->bits};
    any = true;
  }
  ENGINE_CHECK(any, "no layer of the model is quantized: attach quantizers first");
  return m;
}

st::File compress_cluster(models::Model& m, const std::map<std::string, std::string>& metadata,
                          const std::map<std::string, std::vector<float>>& input_means) {
  ENGINE_CHECK(m.qat() && m.qat()->traits().cluster, "compress_cluster: not a ClusterQAT model");
  for (auto& b : m.blocks()) ENGINE_CHECK(b->deployed(), "compress_cluster: the model is not in deploy form");
  std::map<std::string, layers::ClusterQuantizer*> coded;  // weight name -> its quantizer
  for (auto& [name, q] : m.cluster_quantizers()) coded[name == m.specs.back().name ? name + ".weight" : name + ".rbr_reparam.weight"] = q;
  st::File f;
  f.metadata = metadata;
  f.metadata.merge(models::qat_metadata(*m.qat()));
  f.metadata["form"] = "deploy";
  f.metadata["format"] = deploy::kClusterFormat;
  for (auto& [name, q] : m.cluster_quantizers())
    if (auto it = input_means.find(name); it != input_means.end())
      f.tensors[name + deploy::kInputMeanSuffix] = st::Entry::of<float>({(int64_t)it->second.size()}, it->second.data());
  for (auto& t : m.state_dict()) {
    auto it = coded.find(t.name);
    if (it == coded.end()) {
      f.tensors[t.name] = layers::to_entry(t.tensor);
      continue;
    }
    const std::string layer = t.name.substr(0, t.name.size() - std::string(".weight").size());
    const std::vector<uint8_t> packed = deploy::pack_codes(it->second->codes(t.tensor), it->second->bits);
    const std::vector<int64_t> shape = t.tensor.shape().vec();
    f.tensors[layer + ".weight_codes"] = st::Entry::of<uint8_t>({(int64_t)packed.size()}, packed.data());
    f.tensors[layer + ".weight_shape"] = st::Entry::of<int64_t>({(int64_t)shape.size()}, shape.data());
  }
  return f;
}

}  // namespace quant
