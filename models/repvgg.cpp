#include "models/repvgg.h"

#include <fmt/format.h>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/safetensors.h"

namespace models {

using namespace engine;

RepVGG::RepVGG(const ArchConfig& a, Rng& rng, float oabn_k) : arch(a), oabn_k(oabn_k) {
  ENGINE_CHECK(oabn_k <= 0 || a.block == BlockType::repvgg,
               a.name + ": OABN clips the identity-branch BN, which QARepVGG, ACB and OREPA blocks do not have");
  auto make = [&](const BlockSpec& b) {
    std::shared_ptr<layers::RepBlock> block;
    if (a.block == BlockType::qarepvgg) {
      block = std::make_shared<layers::QARepVGGBlock>(b.in, b.out, b.stride, b.groups, rng);
    } else if (a.block == BlockType::acb) {
      block = std::make_shared<layers::ACBlock>(b.in, b.out, b.stride, b.groups, rng);
    } else if (a.block == BlockType::orepa) {
      block = std::make_shared<layers::OREPABlock>(b.in, b.out, b.stride, b.groups, rng);
    } else {
      auto r = std::make_shared<layers::RepVGGBlock>(b.in, b.out, b.stride, b.groups, rng);
      if (r->rbr_identity && oabn_k > 0) r->rbr_identity->oabn_k = oabn_k;
      block = r;
    }
    block->quant.layer = b.name;
    return block;
  };
  auto stages = block_specs(a);
  blocks_.push_back(register_module(stages[0][0].name, make(stages[0][0])));
  for (int s = 1; s <= 4; s++) {  // stage s: a Sequential whose i-th block is named "stage{s}.{i}" (BlockSpec::name)
    auto seq = register_module("stage" + std::to_string(s), std::make_shared<layers::Sequential>());
    for (const BlockSpec& b : stages[s]) {
      blocks_.push_back(make(b));
      seq->push_back(blocks_.back());
    }
  }
  linear_ = register_module("linear", std::make_shared<layers::Linear>(stages[4].back().out, a.num_classes, rng));
  fc_quant_.layer = "linear";
}

Tensor RepVGG::forward(const Tensor& x) {
  Tensor y = x;
  for (const auto& block : blocks_) y = block->forward(y);
  Tensor features = global_avg_pool(y);
  return linear(fc_quant_.quantize_input(features), fc_quant_.quantize_weight(linear_->weight),
                fc_quant_.quantized_bias(linear_->bias, training()));
}

std::vector<QuantLayer> RepVGG::quant_layers() {
  std::vector<QuantLayer> layers;
  size_t i = 0;
  for (auto& stage : block_specs(arch))
    for (const BlockSpec& spec : stage) {
      layers::RepBlock& b = *blocks_[i++];
      QuantLayer l{spec.name, false, spec.in, spec.out, spec.stride, spec.groups, &b.quant, b.has_identity()};
      if (b.deployed()) l.weight = b.rbr_reparam->weight, l.bias = b.rbr_reparam->bias;
      layers.push_back(l);
    }
  layers.push_back({"linear", true, (int)linear_->weight.size(1), (int)linear_->weight.size(0), 1, 1, &fc_quant_, false,
                    linear_->weight, linear_->bias});
  return layers;
}

std::vector<std::pair<std::string, layers::ClusterQuantizer*>> RepVGG::cluster_quantizers() {
  std::vector<std::pair<std::string, layers::ClusterQuantizer*>> q;
  for (const QuantLayer& l : quant_layers())
    if (l.quant->cluster) q.push_back({l.name, l.quant->cluster.get()});
  return q;
}

void RepVGG::request_codebook_resets() {
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

void RepVGG::set_qat(const QatConfig& c) {
  const QatMethodTraits& m = c.traits();
  check_qat_bits(c, std::string("QAT ") + m.name);
  ENGINE_CHECK(!qat_, "the model is set up for QAT already");
  for (auto& b : blocks_)
    ENGINE_CHECK(b->mode() == layers::BlockMode::branches || (m.deploy_first && b->deployed()),
                 "QAT starts from a model in training form (or, for merged, in deploy form)");
  using layers::Codes;
  using layers::Quantizer;
  const size_t n = blocks_.size() + 1;  // the blocks and the FC
  ENGINE_CHECK(c.layers.empty() || c.layers.size() == n,
               std::to_string(c.layers.size()) + " layer widths for the " + std::to_string(n) + " layers of " + arch.name);
  for (size_t i = 0; i < blocks_.size(); i++) {
    layers::RepBlock& b = *blocks_[i];
    if (m.deploy_first) b.switch_to_deploy();
    else b.switch_to_merged(m.fold);
  }
  std::vector<QuantLayer> layers = quant_layers();
  for (size_t i = 0; i < n && !m.full_precision; i++) {
    const LayerBits w = c.layer(i, n);
    if (w.weight == 0) continue;
    auto act = std::make_shared<Quantizer>(w.act, i == 0 ? Codes::signed_act : Codes::unsigned_act, 1, c.init);
    if (m.cluster) layers[i].quant->set(act, nullptr, std::make_shared<layers::ClusterQuantizer>(w.weight));
    else layers[i].quant->set(act, std::make_shared<Quantizer>(w.weight, Codes::weight, c.per_channel ? layers[i].out : 1, c.init));
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

Tensor custom_l2(const RepVGG& model) {
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
