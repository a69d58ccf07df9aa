#include "models/model.h"

#include "engine/ops.h"
#include "engine/safetensors.h"
#include "layers/acnet_block.h"
#include "layers/conv_bn_block.h"
#include "layers/orepa_block.h"
#include "models/repvgg.h"
#include "models/resnet.h"

namespace models {

using namespace engine;

Model::Model(const ArchConfig& a, float oabn_k) : arch(a), oabn_k(oabn_k), specs(layer_specs(a)), fc_quant_(*this, specs.back().name + "_") {
  ENGINE_CHECK(oabn_k <= 0 || a.block == BlockType::repvgg,
               a.name + ": OABN clips the identity-branch BN, which QARepVGG, ACB, OREPA and plain blocks do not have");
}

std::shared_ptr<layers::RepBlock> Model::make_block(size_t i, Rng& rng) {
  const LayerSpec& b = specs.at(i);
  ENGINE_CHECK(!b.fc && i == blocks_.size(), "layer " + b.name + " made out of order");
  std::shared_ptr<layers::RepBlock> block;
  switch (b.block) {
    case BlockType::qarepvgg: block = std::make_shared<layers::QARepVGGBlock>(b.in, b.out, b.stride, b.groups, rng); break;
    case BlockType::acb: block = std::make_shared<layers::ACBlock>(b.in, b.out, b.stride, b.groups, rng); break;
    case BlockType::orepa: block = std::make_shared<layers::OREPABlock>(b.in, b.out, b.stride, b.groups, rng); break;
    case BlockType::plain: block = std::make_shared<layers::ConvBNBlock>(b.in, b.out, b.kernel, b.stride, b.groups, rng); break;
    case BlockType::repvgg: {
      auto r = std::make_shared<layers::RepVGGBlock>(b.in, b.out, b.stride, b.groups, rng);
      if (r->rbr_identity && oabn_k > 0) r->rbr_identity->oabn_k = oabn_k;
      block = r;
      break;
    }
  }
  ENGINE_CHECK(block->kernel == b.kernel, "layer " + b.name + ": a " + std::to_string(b.kernel) + "x" + std::to_string(b.kernel) +
                                              " conv needs a plain block");
  block->relu = b.relu && b.residual < 0;  // a shortcut's ReLU follows the add (ResNet::BasicBlock::forward)
  block->quant.layer = b.name;
  blocks_.push_back(block);
  return block;
}

void Model::make_fc(Rng& rng) {
  const LayerSpec& f = specs.back();
  ENGINE_CHECK(blocks_.size() + 1 == specs.size(), "the FC made before the blocks");
  linear_ = register_module(f.name, std::make_shared<layers::Linear>(f.in, f.out, rng));
  fc_quant_.layer = f.name;
}

Tensor Model::classify(const Tensor& y) {
  Tensor features = global_avg_pool(y);
  return linear(fc_quant_.quantize_input(features), fc_quant_.quantize_weight(linear_->weight),
                fc_quant_.quantized_bias(linear_->bias, training()));
}

std::vector<QuantLayer> Model::quant_layers() {
  std::vector<QuantLayer> layers;
  for (size_t i = 0; i + 1 < specs.size(); i++) {
    layers::RepBlock& b = *blocks_[i];
    QuantLayer l{specs[i], &b.quant, b.has_identity()};
    if (b.deployed()) l.weight = b.rbr_reparam->weight, l.bias = b.rbr_reparam->bias;
    layers.push_back(l);
  }
  layers.push_back({specs.back(), &fc_quant_, false, linear_->weight, linear_->bias});
  return layers;
}

std::vector<std::pair<std::string, layers::ClusterQuantizer*>> Model::cluster_quantizers() {
  std::vector<std::pair<std::string, layers::ClusterQuantizer*>> q;
  for (const QuantLayer& l : quant_layers())
    if (l.quant->cluster) q.push_back({l.name, l.quant->cluster.get()});
  return q;
}

void Model::request_codebook_resets() {
  for (auto& [name, q] : cluster_quantizers()) q->request_reset();
}

// The methods, one row each (models/repvgg.h QatMethodTraits): name, deploy first, merged mode's BN fold,
// full precision, codebook weights. ClusterQAT folds the running statistics (frozen, as torch.ao's
// freeze_bn_stats): M is then the deploy kernel itself, and batch or estimated statistics cascade at 2 bits
// (docs/cluster.md).
static const QatMethodTraits kQatMethods[] = {
    {QatMethod::repq_bn, "repq-bn", false, layers::BnFold::batch, false, false},
    {QatMethod::repq_bnest, "repq-bnest", false, layers::BnFold::estimated, false, false},
    {QatMethod::merged, "merged", true, layers::BnFold::running, false, false},
    {QatMethod::bnest, "bnest", false, layers::BnFold::estimated, true, false},
    {QatMethod::cluster, "cluster", false, layers::BnFold::running, false, true},
};
const char* const kQatMethodNames = "repq-bn, repq-bnest, merged, bnest, cluster";

const QatMethodTraits& qat_traits(QatMethod m) {
  for (const QatMethodTraits& t : kQatMethods)
    if (t.method == m) return t;
  fail("unknown QAT method " + std::to_string((int)m));
}

std::optional<QatMethod> parse_qat_method(const std::string& name) {
  for (const QatMethodTraits& t : kQatMethods)
    if (name == t.name) return t.method;
  return std::nullopt;
}

void check_qat_bits(const QatConfig& c, const std::string& what) {
  const bool cluster = c.traits().cluster;
  auto check = [&](int bits, int act_bits, const std::string& where) {
    if (cluster ? bits < 1 || bits > 8 : bits < 2 || bits > 16)
      fail(what + ": " + where + std::to_string(bits) + " weight bits is outside " +
           (cluster ? "1..8 (the codebook of --qat cluster has 2^B entries, B 1..8)" : "2..16"));
    if (act_bits < (cluster ? 1 : 2) || act_bits > 16)
      fail(what + ": " + where + std::to_string(act_bits) + " activation bits is outside " + (cluster ? "1..16" : "2..16"));
  };
  check(c.bits, c.act_bits, "");
  for (size_t i = 0; i < c.layers.size(); i++)
    if (c.layers[i].weight != 0) check(c.layers[i].weight, c.layers[i].act, "layer " + std::to_string(i) + ": ");
  if (cluster && c.per_channel) fail(what + ": --qat cluster has one codebook per layer; --granularity channel is for the uniform methods");
}

std::shared_ptr<layers::Quantizer> shared_input(const std::vector<QuantLayer>& layers, size_t i, int act_bits) {
  const size_t first = input_owner(layers, i);
  if (first == i || !layers[first].quant->act) return nullptr;
  const std::shared_ptr<layers::Quantizer>& q = layers[first].quant->act;
  ENGINE_CHECK(q->bits == act_bits, "layer " + layers[i].name + " reads the input of " + layers[first].name +
                                        ", which has one quantizer: give both the same activation bits");
  return q;
}

void Model::set_qat(const QatConfig& c) {
  const QatMethodTraits& m = c.traits();
  check_qat_bits(c, std::string("QAT ") + m.name);
  ENGINE_CHECK(!qat_, "the model is set up for QAT already");
  for (auto& b : blocks_)
    ENGINE_CHECK(b->mode() == layers::BlockMode::branches || (m.deploy_first && b->deployed()),
                 "QAT starts from a model in training form (or, for merged, in deploy form)");
  using layers::Codes;
  using layers::Quantizer;
  const size_t n = specs.size();  // the blocks and the FC
  ENGINE_CHECK(c.layers.empty() || c.layers.size() == n,
               std::to_string(c.layers.size()) + " layer widths for the " + std::to_string(n) + " layers of " + arch.name);
  for (auto& b : blocks_) {
    if (m.deploy_first) b->switch_to_deploy();
    else b->switch_to_merged(m.fold);
  }
  std::vector<QuantLayer> layers = quant_layers();
  for (size_t i = 0; i < n && !m.full_precision; i++) {
    const LayerBits w = c.layer(i, n);
    if (w.weight == 0) continue;
    auto weight = m.cluster ? nullptr : std::make_shared<Quantizer>(w.weight, Codes::weight, c.per_channel ? layers[i].out : 1, c.init);
    auto cluster = m.cluster ? std::make_shared<layers::ClusterQuantizer>(w.weight) : nullptr;
    if (auto shared = shared_input(layers, i, w.act)) {
      layers[i].quant->set(nullptr, weight, cluster);
      layers[i].quant->share_input(shared);
      continue;
    }
    auto act = std::make_shared<Quantizer>(w.act, layers[i].source < 0 ? Codes::signed_act : Codes::unsigned_act, 1, c.init);
    layers[i].quant->set(act, weight, cluster);
  }
  qat_ = c;
}

LayerBits QatConfig::layer(size_t i, size_t n) const {
  if (!layers.empty()) return layers.at(i);
  return quantize_first_last || (i != 0 && i + 1 != n) ? LayerBits{bits, act_bits} : LayerBits{};
}

std::map<std::string, std::string> qat_metadata(const QatConfig& c) {
  std::map<std::string, std::string> md = {
      {"qat", qat_method_name(c.method)}, {"bits", std::to_string(c.bits)}, {"act_bits", std::to_string(c.act_bits)},
      {"granularity", c.per_channel ? "channel" : "layer"}, {"step_init", layers::step_init_name(c.init)},
      {"quantize_first_last", c.quantize_first_last ? "1" : "0"}};
  if (!c.layers.empty()) md["layer_bits"] = layer_widths(c.layers);
  return md;
}

std::optional<QatConfig> qat_from_metadata(const std::map<std::string, std::string>& md, const std::string& file) {
  auto it = md.find("qat");
  if (it == md.end()) return std::nullopt;
  auto get = [&](const std::string& key) -> const std::string& {
    auto f = md.find(key);
    if (f == md.end()) fail(file + ": QAT checkpoint without metadata '" + key + "'");
    return f->second;
  };
  auto bits = [&](const std::string& key) {  // the range per method: check_qat_bits below
    const std::string& v = get(key);
    if (v.empty() || v.size() > 2 || v.find_first_not_of("0123456789") != std::string::npos)
      fail(file + ": metadata '" + key + "' is '" + st::cut(v) + "', expected a bit width");
    return std::stoi(v);
  };
  QatConfig c;
  const std::optional<QatMethod> method = parse_qat_method(it->second);
  if (!method) fail(file + ": metadata 'qat' is '" + st::cut(it->second) + "', not one of " + kQatMethodNames);
  c.method = *method;
  c.bits = bits("bits");
  c.act_bits = bits("act_bits");
  const std::string& g = get("granularity");
  if (g != "layer" && g != "channel") fail(file + ": metadata 'granularity' is '" + st::cut(g) + "', expected layer or channel");
  c.per_channel = g == "channel";
  try {
    c.init = layers::parse_step_init(get("step_init"));
  } catch (const std::exception& e) {
    fail(file + ": metadata 'step_init': " + e.what());
  }
  const std::string& q = get("quantize_first_last");
  if (q != "0" && q != "1") fail(file + ": metadata 'quantize_first_last' is '" + st::cut(q) + "', expected 0 or 1");
  c.quantize_first_last = q == "1";
  if (auto lb = md.find("layer_bits"); lb != md.end()) c.layers = parse_layer_widths(lb->second, file + ": metadata 'layer_bits'");
  check_qat_bits(c, file + ": metadata");
  return c;
}

std::unique_ptr<Model> make_model(const ArchConfig& arch, Rng& rng, float oabn_k) {
  if (arch.family == Family::resnet) return std::make_unique<ResNet>(arch, rng, oabn_k);
  return std::make_unique<RepVGG>(arch, rng, oabn_k);
}

}  // namespace models
