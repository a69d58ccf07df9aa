#include "quant/inspect.h"

#include <fmt/format.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <tuple>

#include "datasets/loader.h"
#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/random.h"
#include "deploy/cluster_file.h"
#include "quant/plots.h"
#include "quant/ptq_model.h"
#include "quant/run_source.h"

namespace quant {

namespace fs = std::filesystem;

std::vector<TapClass> tap_classes(int64_t out, int64_t in_per_group, bool identity, int k) {
  const int64_t taps = k * k;
  std::vector<TapClass> c((size_t)(out * in_per_group * taps), TapClass::C);
  for (int64_t o = 0; o < out; o++)
    for (int64_t i = 0; i < in_per_group; i++) {
      // [o, i, k/2, k/2]: the centre tap; with an identity branch [o, o % (I/g), 1, 1] is its tap
      const bool a = identity && i == o % in_per_group;
      c[(size_t)((o * in_per_group + i) * taps + taps / 2)] = a ? TapClass::A : TapClass::B;
    }
  return c;
}

KernelStats kernel_stats(const Tensor& kernel, bool identity) {
  ENGINE_CHECK(kernel.dim() == 4 && kernel.size(2) == kernel.size(3) && kernel.size(2) % 2 == 1,
               "a k x k kernel of odd k, got " + kernel.str());
  const std::vector<float> w = kernel.to_vector();
  const std::vector<TapClass> cls = tap_classes(kernel.size(0), kernel.size(1), identity, (int)kernel.size(2));
  KernelStats s;
  double sum = 0, sum_abs[3] = {0, 0, 0};
  for (size_t k = 0; k < w.size(); k++) {
    sum += w[k];
    s.max_abs = std::max(s.max_abs, std::fabs(w[k]));
    sum_abs[(int)cls[k]] += std::fabs(w[k]);
    s.count[(int)cls[k]]++;
  }
  const double mean = sum / (double)w.size();
  double ss = 0;
  for (float v : w) ss += ((double)v - mean) * ((double)v - mean);
  s.std = w.size() > 1 ? (float)std::sqrt(ss / (double)(w.size() - 1)) : 0.0f;
  s.max_over_std = s.std > 0 ? s.max_abs / s.std : 0.0f;
  for (int c = 0; c < 3; c++) s.mean_abs[c] = s.count[c] ? sum_abs[c] / (double)s.count[c] : 0.0;
  return s;
}

std::optional<float> identity_bn_max_scale(const layers::RepBlock& block) {
  auto* b = dynamic_cast<const layers::RepVGGBlock*>(&block);
  if (!b || !b->rbr_identity) return std::nullopt;
  engine::NoGradGuard no_grad;
  const layers::BatchNorm2d& bn = *b->rbr_identity;
  // t = γ_used / sqrt(σ² + ε), the identity kernel's scale in the merged kernel
  const std::vector<float> t = layers::bn_scale(layers::bn_tensors(bn)).to_vector();
  float m = 0;
  for (float v : t) m = std::max(m, std::fabs(v));
  return m;
}

std::string inspect_help() {
  return std::string(
             "usage: ./inspect [--ckpt FILE] [options]\n"
             "For every block of the model: the merged 3x3 kernel's max|w|, std, max|w|/std; mean |w| of its Class A\n"
             "(identity taps: 3x3 + 1x1 + identity), B (other centre taps: 3x3 + 1x1) and C (non-centre taps: 3x3)\n"
             "positions (OABN paper Sec. 2.1); the largest identity-BN scale |gamma|/sqrt(var + eps); and the largest\n"
             "|train-form - deploy-form| output difference of the block on a batch (validation data, else random).\n\n"
             "  --hist DIR             write a PNG histogram of each block's merged kernel into DIR\n") +
         kSourceHelp + "  --help                 this text\n";
}

namespace {

struct BlockRow {
  std::string name;
  int in, out, stride, groups;
  bool identity;
  KernelStats k;
  std::optional<float> id_scale, diff, rel_diff;  // rel_diff: diff / max|training-form output|
};

std::string opt_str(const std::optional<float>& v, const char* format) {
  return v ? fmt::format(fmt::runtime(format), *v) : "-";
}

nlohmann::json opt_json(const std::optional<float>& v) { return v ? nlohmann::json(*v) : nlohmann::json(nullptr); }

float max_abs(const Tensor& a) {
  float m = 0;
  for (float v : a.to_vector()) m = std::max(m, std::fabs(v));
  return m;
}

float max_abs_diff(const Tensor& a, const Tensor& b) {
  const std::vector<float> x = a.to_vector(), y = b.to_vector();
  float m = 0;
  for (size_t i = 0; i < x.size(); i++) m = std::max(m, std::fabs(x[i] - y[i]));
  return m;
}


// The batch to compare the two forms on: validation images if the data is there, else random N(0, 1) ones.
Tensor inspection_batch(const Source& s, int batch, std::string& kind) {
  try {
    auto val = open_split(s, false, (size_t)batch);
    data::Loader loader(*val, batch, false, 0, omp_get_max_threads());
    loader.start_epoch(0);
    const data::Batch* b = loader.next();
    if (!b) throw std::runtime_error("no validation images");
    Tensor x, labels;
    data::to_tensors(*b, s.device, x, labels);
    kind = fmt::format("a batch of {} validation images", b->n);
    return x;
  } catch (const std::exception& e) {
    engine::Rng rng(0);
    kind = fmt::format("a random N(0, 1) batch of {} ({})", batch, e.what());
    return engine::rand_normal({batch, 3, s.image_size, s.image_size}, 0.0f, 1.0f, rng).to(s.device);
  }
}

struct Inspection {
  std::vector<BlockRow> rows;
  std::optional<float> logits_diff, logits_peak;  // train form only
};

// Every block's statistics. A training-form model (x defined) is switched to deploy form block by block,
// each block's two forms compared on the training-form activations that reach it (taken in the model's forward).
Inspection inspect_blocks(models::Model& model, const Tensor& x) {
  std::map<const layers::Module*, std::string> names;
  for (auto& [name, m] : model.modules()) names[m] = name;
  engine::NoGradGuard no_grad;
  Inspection in;
  const bool train_form = x.defined();
  Tensor logits_train;
  std::vector<Tensor> inputs(model.blocks().size());
  if (train_form) {
    for (size_t i = 0; i < inputs.size(); i++) model.blocks()[i]->input_observer = [&y = inputs[i]](const Tensor& t) { y = t; };
    logits_train = model.forward(x);
    for (auto& b : model.blocks()) b->input_observer = nullptr;
  }
  for (size_t i = 0; i < inputs.size(); i++) {
    layers::RepBlock* b = model.blocks()[i].get();
    BlockRow r{names[b], b->in_channels, b->out_channels, b->stride, b->groups, b->has_identity(), {}, {}, {}, {}};
    r.id_scale = identity_bn_max_scale(*b);
    if (train_form) {
      Tensor t = b->forward(inputs[i]);  // training form
      b->switch_to_deploy();
      r.diff = max_abs_diff(t, b->forward(inputs[i]));
      const float peak = max_abs(t);
      r.rel_diff = peak > 0 ? *r.diff / peak : 0.0f;
    }
    r.k = kernel_stats(b->rbr_reparam->weight, r.identity);
    in.rows.push_back(r);
  }
  if (train_form) {
    in.logits_diff = max_abs_diff(logits_train, model.forward(x));
    in.logits_peak = max_abs(logits_train);
  }
  return in;
}

void print_inspection(const Inspection& in, const Source& s, const std::string& batch_kind) {
  std::printf("%-10s %9s %2s %2s %2s | %8s %8s %8s | %8s %8s %8s | %8s | %9s %9s\n", "block", "in->out", "s", "g", "id",
              "max|w|", "std", "max/std", "|A|", "|B|", "|C|", "id_scale", "max|dy|", "rel");
  for (const BlockRow& r : in.rows)
    std::printf("%-10s %9s %2d %2d %2s | %8.4f %8.4f %8.2f | %8s %8.4f %8.4f | %8s | %9s %9s\n", r.name.c_str(),
                fmt::format("{}->{}", r.in, r.out).c_str(), r.stride, r.groups, r.identity ? "y" : "n", r.k.max_abs, r.k.std,
                r.k.max_over_std, r.identity ? fmt::format("{:.4f}", r.k.mean_abs[0]).c_str() : "-", r.k.mean_abs[1],
                r.k.mean_abs[2], opt_str(r.id_scale, "{:.4f}").c_str(), opt_str(r.diff, "{:.2e}").c_str(),
                opt_str(r.rel_diff, "{:.1e}").c_str());
  std::printf("|A|, |B|, |C|: mean |w| of the merged kernel's Class A (identity taps), B (other centre taps) and C\n"
              "(non-centre taps) positions; id_scale: max |gamma|/sqrt(var + eps) of the identity BN%s;\n",
              s.oabn_k > 0 ? " (OABN-clipped gamma)" : "");
  if (in.logits_diff)
    std::printf("max|dy|: max |train form - deploy form| of the block's output on %s, each block fed\n"
                "the training-form activations; rel: max|dy| / max|output|. The logits (max |logit| %.3g) differ\n"
                "by at most %.3g.\n",
                batch_kind.c_str(), *in.logits_peak, *in.logits_diff);
  else
    std::printf("the checkpoint is in deploy form: no branches to compare against, nor identity BN.\n");
}

nlohmann::json inspection_json(const Inspection& in, const Source& s, const std::string& batch_kind) {
  nlohmann::json j;
  j["checkpoint"] = s.ckpt;
  j["config"] = s.config;
  j["arch"] = s.arch;
  j["form"] = in.logits_diff ? "train" : "deploy";
  j["oabn_k"] = s.oabn_k;
  j["batch"] = in.logits_diff ? nlohmann::json(batch_kind) : nlohmann::json(nullptr);
  j["logits_max_abs_diff"] = opt_json(in.logits_diff);
  j["logits_max_abs"] = opt_json(in.logits_peak);
  j["blocks"] = nlohmann::json::array();
  for (const BlockRow& r : in.rows)
    j["blocks"].push_back({{"name", r.name}, {"in", r.in}, {"out", r.out}, {"stride", r.stride}, {"groups", r.groups},
                           {"identity", r.identity}, {"max_abs", r.k.max_abs}, {"std", r.k.std},
                           {"max_over_std", r.k.max_over_std},
                           {"mean_abs_a", r.identity ? nlohmann::json(r.k.mean_abs[0]) : nlohmann::json(nullptr)},
                           {"mean_abs_b", r.k.mean_abs[1]}, {"mean_abs_c", r.k.mean_abs[2]},
                           {"count_a", r.k.count[0]}, {"count_b", r.k.count[1]}, {"count_c", r.k.count[2]},
                           {"identity_bn_max_scale", opt_json(r.id_scale)}, {"max_abs_diff", opt_json(r.diff)},
                           {"rel_diff", opt_json(r.rel_diff)}});
  return j;
}

// A ClusterQAT model in deploy form: each layer's codebook, each entry with the number of weights it holds.
void print_codebooks(models::Model& model) {
  std::printf("\ncodebooks (ClusterQAT, %d bits): entry value [weights assigned to it]\n", model.qat()->bits);
  for (const models::QuantLayer& l : model.quant_layers()) {
    if (!l.quant->cluster) continue;
    const layers::ClusterQuantizer& q = *l.quant->cluster;
    const std::vector<float> c = q.codebook.to_vector();
    const std::vector<int64_t> counts = layers::entry_counts(q.codes(l.weight), c.size());
    std::string line;
    for (size_t k = 0; k < c.size(); k++) line += fmt::format(" {:.4g} [{}]", c[k], counts[k]);
    std::printf("%-10s%s\n", l.name.c_str(), line.c_str());
  }
}

void print_sizes(const models::Model& model) {
  const models::QatConfig& q = *model.qat();
  const deploy::ModelBytes b = deploy::model_bytes(model.arch, quant::layer_widths(model));
  if (!q.layers.empty()) {  // --layer-bits
    std::printf("\nmodel size (deploy weights and biases, each layer at its own width, --layer-bits): FP32 %lld bytes, "
                "uniform %lld bytes (%.2fx smaller), cluster %lld bytes (%.2fx smaller)\n", (long long)b.fp32,
                (long long)b.uniform, (double)b.fp32 / (double)b.uniform, (long long)b.cluster, (double)b.fp32 / (double)b.cluster);
    return;
  }
  std::printf("\nmodel size (deploy weights and biases; the first layer and the FC %s): FP32 %lld bytes, uniform %d-bit %lld "
              "bytes (%.2fx smaller), cluster %d-bit %lld bytes (%.2fx smaller)\n",
              q.quantize_first_last ? "quantized" : "FP32", (long long)b.fp32, q.bits, (long long)b.uniform,
              (double)b.fp32 / (double)b.uniform, q.bits, (long long)b.cluster, (double)b.fp32 / (double)b.cluster);
}

}  // namespace

int run_inspect(const std::vector<std::string>& args) {
  SourceOptions so;
  std::string hist;
  for (size_t i = 0; i < args.size();) {
    if (parse_source_option(args, i, so)) continue;
    if (args[i] == "--help") {
      std::fputs(inspect_help().c_str(), stdout);
      return 0;
    }
    if (args[i] == "--hist") {
      if (i + 1 >= args.size()) throw std::runtime_error("option --hist needs a value");
      hist = args[i + 1];
      i += 2;
      continue;
    }
    throw std::runtime_error(fmt::format("unknown option '{}' (see ./inspect --help)", args[i]));
  }
  Source s = resolve_source(so);
  std::printf("inspect: %s\n", describe(s).c_str());
  const bool train_form = !s.deploy_form();
  auto model = load_model(s);
  s.file = {};

  std::string batch_kind;
  const Tensor x = train_form ? inspection_batch(s, so.batch_size > 0 ? so.batch_size : 32, batch_kind) : Tensor();
  const Inspection in = inspect_blocks(*model, x);
  print_inspection(in, s, batch_kind);
  if (model->qat() && model->qat()->traits().cluster) print_codebooks(*model);
  if (model->qat() && !model->qat()->traits().full_precision) print_sizes(*model);

  if (!hist.empty()) {
    fs::create_directories(hist);
    for (size_t i = 0; i < in.rows.size(); i++)
      write_histogram_png((fs::path(hist) / (in.rows[i].name + ".png")).string(), model->blocks()[i]->rbr_reparam->weight.to_vector());
    std::printf("wrote %zu histograms into %s\n", in.rows.size(), hist.c_str());
  }
  if (!so.json.empty()) {
    write_json(so.json, inspection_json(in, s, batch_kind).dump(2) + "\n");
    std::printf("wrote %s\n", so.json.c_str());
  }
  return 0;
}

}  // namespace quant
