#include "quant/ptq.h"

#include <fmt/format.h>
#include <omp.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>

#include "datasets/loader.h"
#include "deploy/cluster_file.h"
#include "engine/autograd.h"
#include "engine/cpu/int8.h"
#include "engine/ops.h"
#include "quant/deploy_export.h"
#include "models/layer_bits.h"
#include "quant/plots.h"
#include "quant/sensitivity.h"
#include "trainer/step.h"

namespace quant {

using engine::Tensor;

const char* const kQuantHelp =
    "  --bits B[,B...]        weight bit widths (2..16), one quantized model each (./export: one, 2..8); required\n"
    "                         for a full-precision checkpoint, refused for a QAT one\n"
    "  --act-bits B[,B...]    activation bit widths: one for all, or one per --bits (default: as --bits)\n"
    "  --granularity layer|channel   weight scales per layer (default) or per output channel\n"
    "  --calib minmax|percentile|mse activation ranges: min-max (default), 0.01/99.99 percentiles, or the\n"
    "                         range alpha*[min, max] (alpha = 0.01 ... 1) of least quantization MSE\n"
    "  --calib-batches N      calibration batches (default 16, of --batch-size images, default 128)\n"
    "  --quantize-first-last  also quantize the first layer (stage0, conv1) and the FC\n"
    "  --layer-bits SPEC      per layer: NAME=B or NAME=fp32, comma-separated, * and ? in names, later entries\n"
    "                         win (e.g. stage0=8,stage2.*=fp32); over the widths above\n";

std::string ptq_help() {
  return std::string(
             "usage: ./ptq [--ckpt FILE] --bits B[,B...] [options]\n"
             "Post-training quantization of the merged (deploy-form) model, simulated in float32 (fake quantization):\n"
             "weights symmetric uniform, activations (each quantized conv's input) asymmetric uniform per layer,\n"
             "calibrated on training batches without augmentation; the first layer and the FC stay FP32. Prints top-1\n"
             "(and top-5 for imagenet) of the FP32 deploy model and of each bit width, and the drop.\n"
             "A QAT checkpoint (./train --qat) is evaluated instead at its learned quantizers, in deploy form, with\n"
             "no calibration and no --bits.\n\n") +
         kQuantHelp +
         "  --sensitivity          per quantized layer (stage0 and the FC too) and bit width: the mean KL divergence of\n"
         "                         the logits from the FP32 model's with that layer alone quantized, and with all\n"
         "                         but it quantized, on a few hundred training images; a table sorted by the first\n"
         "                         (docs/sensitivity.md)\n"
         "  --sensitivity-images N training images of the measure (default 256)\n"
         "  --sensitivity-check    also each layer alone's top-1 on the validation set, and Spearman's correlation of\n"
         "                         the two rankings (a full evaluation per layer: slow)\n"
         "  --plot FILE.png        --sensitivity: a bar chart per bit width, identity-branch blocks in orange\n"
         "  --method nearest|adaround   weight rounding: to nearest (default), or learned per weight by AdaRound\n"
         "                         (Nagel et al. 2020), layer by layer on training images (docs/adaround.md)\n"
         "  --adaround-iters N     AdaRound's iterations per layer (default 2000, batches of 32)\n"
         "  --adaround-images N    the training images AdaRound reconstructs on (default 1024)\n"
         "  --adaround-target quantized|fp32   the output each layer's rounding reconstructs: its FP32 weights' on its\n"
         "                         input in the quantized model (default), or in the FP32 model (the paper's Eq. 25)\n"
         "  --keep-fp32 N          the N layers whose float version brings the rest, quantized, closest to FP32 (the\n"
         "                         smallest 'all but it' KL of that measure, at each bit width) stay FP32\n"
         "  --export FILE          write the quantized deploy model (integer codes, docs/int8.md) for ./infer;\n"
         "                         one bit width of at most 8, or a QAT checkpoint; a ClusterQAT checkpoint: its\n"
         "                         packed codes and codebooks (docs/cluster.md), which ./ptq --ckpt reads back\n" +
         kSourceHelp + "  --help                 this text\n";
}

bool parse_quant_option(const std::vector<std::string>& args, size_t& i, PtqOptions& o) {
  const std::string& a = args[i];
  if (a == "--quantize-first-last") {
    o.quantize_first_last = true;
  } else if (a == "--bits" || a == "--act-bits" || a == "--granularity" || a == "--calib" || a == "--calib-batches" ||
             a == "--layer-bits") {
    if (i + 1 >= args.size()) throw std::runtime_error(fmt::format("option {} needs a value", a));
    const std::string& v = args[++i];
    if (a == "--bits") o.bits = parse_int_list(a, v, 2);
    else if (a == "--act-bits") o.act_bits = parse_int_list(a, v, 2);
    else if (a == "--granularity") o.granularity = parse_granularity(v);
    else if (a == "--calib") o.calib = parse_calib(v);
    else if (a == "--layer-bits") o.layer_bits = v;
    else o.calib_batches = parse_int(a, v, 1);
  } else {
    return false;
  }
  if (o.first_quant_option.empty()) o.first_quant_option = a;
  i++;
  return true;
}

void check_quant_options(const PtqOptions& o) {
  for (int b : o.bits)
    if (b > 16) throw std::runtime_error(fmt::format("option --bits: {} is more than 16", b));
  for (int b : o.act_bits)
    if (b > 16) throw std::runtime_error(fmt::format("option --act-bits: {} is more than 16", b));
  if (o.sensitivity && !o.export_path.empty()) throw std::runtime_error("--sensitivity measures, --export writes a model: give one");
  if (o.sensitivity && o.keep_fp32 > 0) throw std::runtime_error("--keep-fp32 quantizes a model; --sensitivity measures: give one");
  if (o.sensitivity && o.adaround) throw std::runtime_error("--method adaround quantizes a model; --sensitivity measures: give one");
  if (!o.plot.empty() && !o.sensitivity) throw std::runtime_error("--plot draws --sensitivity's measure: give --sensitivity");
  if (!o.export_path.empty() && o.bits.size() > 1)
    throw std::runtime_error("--export writes one quantized model: give one --bits value");
  if (o.act_bits.size() > 1 && o.act_bits.size() != o.bits.size())
    throw std::runtime_error(fmt::format("--act-bits has {} values for {} --bits: give one, or one per bit width",
                                         o.act_bits.size(), o.bits.size()));
}

PtqOptions parse_ptq_options(const std::vector<std::string>& args) {
  PtqOptions o;
  for (size_t i = 0; i < args.size();) {
    if (parse_source_option(args, i, o.source) || parse_quant_option(args, i, o)) continue;
    if (args[i] == "--export" || args[i] == "--plot" || args[i] == "--sensitivity-images" || args[i] == "--keep-fp32" ||
        args[i] == "--method" || args[i] == "--adaround-iters" || args[i] == "--adaround-images" ||
        args[i] == "--adaround-target") {
      if (i + 1 >= args.size()) throw std::runtime_error(fmt::format("option {} needs a value", args[i]));
      const std::string& v = args[i + 1];
      if (args[i] == "--export") o.export_path = v;
      else if (args[i] == "--method" && v != "nearest" && v != "adaround")
        throw std::runtime_error(fmt::format("option --method: '{}' is not nearest or adaround", v));
      else if (args[i] == "--method") o.adaround = v == "adaround";
      else if (args[i] == "--adaround-iters") o.adaround_iters = parse_int(args[i], v, 1);
      else if (args[i] == "--adaround-images") o.adaround_images = parse_int(args[i], v, 1);
      else if (args[i] == "--adaround-target") o.adaround_target = parse_adaround_target(v);
      else if (args[i] == "--plot") o.plot = v;
      else if (args[i] == "--keep-fp32") o.keep_fp32 = parse_int(args[i], v, 1);
      else o.sensitivity_images = parse_int(args[i], v, 1);
      i += 2;
      continue;
    }
    if (args[i] == "--sensitivity" || args[i] == "--sensitivity-check") {
      o.sensitivity = true;
      o.sensitivity_check |= args[i] == "--sensitivity-check";
      i++;
      continue;
    }
    if (args[i] != "--help") throw std::runtime_error(fmt::format("unknown option '{}' (see ./ptq --help)", args[i]));
    o.help = true;
    i++;
  }
  if (!o.help) check_quant_options(o);
  return o;
}

Calibration calibrate_source(const Source& s, models::Model& deployed, const PtqOptions& o, int batch) {
  auto train = open_split(s, true, (size_t)o.calib_batches * batch);  // spread over the training set
  data::Loader loader(*train, batch, /*train=*/false, 0, omp_get_max_threads());  // training images, eval transform
  Calibration cal = calibrate(deployed, loader, o.calib_batches, o.calib, s.device);
  if (cal.batches == 0) throw std::runtime_error(fmt::format("{}: no training images to calibrate on", s.data));
  const std::vector<models::QuantLayer> layers = deployed.quant_layers();
  for (size_t i = 0; i < cal.observers.size(); i++)
    if (const ActObserver& obs = cal.observers[i]; obs.non_finite > 0)
      throw std::runtime_error(fmt::format("{}: the input of layer {} is not finite on the calibration images ({} of {} "
                                           "values inf or NaN): the model's activations overflow float32 before it "
                                           "(weights or BN statistics too large?)", s.ckpt, layers.at(i).name, obs.non_finite,
                                           obs.count));
  return cal;
}

QuantConfig quant_config(const PtqOptions& o, size_t k, models::Model& model) {
  QuantConfig c;
  c.weight_bits = o.bits.at(k);
  c.act_bits = o.act_bits.empty() ? o.bits[k] : o.act_bits.size() == 1 ? o.act_bits[0] : o.act_bits[k];
  c.granularity = o.granularity;
  c.calib = o.calib;
  c.quantize_first_last = o.quantize_first_last;
  if (!o.layer_bits.empty()) {
    std::vector<std::string> names;
    for (const models::QuantLayer& l : model.quant_layers()) names.push_back(l.name);
    std::vector<LayerBits> base;
    for (size_t i = 0; i < names.size(); i++) base.push_back(bits_of(i, names.size(), c));
    c.layers = models::apply_layer_spec(o.layer_bits, names, base, c.act_bits);
    for (size_t i = 0; i < names.size(); i++)
      if (c.layers[i].weight == 1 || c.layers[i].act == 1)
        throw std::runtime_error(fmt::format("option --layer-bits: layer {}: 1-bit widths are ClusterQAT's (./train --qat cluster); "
                                             "PTQ takes 2..16", names[i]));
  }
  return c;
}

namespace {

using Accuracy = train::EvalResult;

double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

struct Row {
  int bits, act_bits;
  Accuracy acc;
  nlohmann::json layers;  // each quantized layer's activation range and quantizer
  nlohmann::json adaround = nullptr;  // --method adaround: each layer's reconstruction errors
};

// --method adaround on the model c quantized (its quantizers attached): prints and returns each layer's line.
nlohmann::json run_adaround(const PtqOptions& o, const Source& s, models::Model& model, const QuantConfig& c, int batch) {
  auto train = open_split(s, true, (size_t)o.adaround_images);  // spread over the training set
  data::Loader loader(*train, batch, /*train=*/false, 0, omp_get_max_threads());
  AdaRoundOptions a;
  a.iters = o.adaround_iters;
  a.images = o.adaround_images;
  a.target = o.adaround_target;
  const auto t0 = std::chrono::steady_clock::now();
  const std::vector<AdaRoundLayer> layers = adaround(model, loader, a, s.device);
  std::printf("W%d/A%d AdaRound: %d iterations a layer on %zu training images, target f(W x) of the %s model's x, %.1f s\n",
              c.weight_bits, c.act_bits, a.iters, std::min(train->size(), (size_t)a.images),
              a.target == AdaRoundTarget::fp32_input ? "FP32" : "quantized", seconds_since(t0));
  std::printf("  layer       output error: nearest  AdaRound   rounded away from nearest\n");
  nlohmann::json j = nlohmann::json::array();
  for (const AdaRoundLayer& l : layers) {
    std::printf("  %-10s  %20.6g  %9.6g   %6.2f%%\n", l.name.c_str(), l.nearest_error, l.adaround_error, 100 * l.flipped);
    j.push_back({{"name", l.name}, {"nearest_error", l.nearest_error}, {"adaround_error", l.adaround_error},
                 {"flipped", l.flipped}, {"seconds", l.seconds}});
  }
  return j;
}

nlohmann::json layers_json(models::Model& model, const QuantConfig& c, const std::vector<Range>& ranges) {
  const std::vector<models::QuantLayer> quant_layers = model.quant_layers();
  nlohmann::json layers = nlohmann::json::array();
  for (size_t i = 0; i < ranges.size(); i++) {
    const LayerBits b = bits_of(i, quant_layers.size(), c);
    if (b.weight == 0) continue;
    const AffineQuant a = asymmetric_params(ranges[i].lo, ranges[i].hi, b.act);
    layers.push_back({{"name", quant_layers[i].name}, {"act_lo", ranges[i].lo}, {"act_hi", ranges[i].hi}, {"act_scale", a.scale},
                      {"act_zero_point", a.zero_point}});
    if (!c.layers.empty()) layers.back()["bits"] = b.weight, layers.back()["act_bits"] = b.act;
  }
  return layers;
}

void print_ptq_header(const PtqOptions& o, size_t images) {
  std::printf("\nSimulated quantization (fake quantization in float32; no integer kernels run):\n");
  std::printf("  weights: symmetric uniform, per %s, codes [-(2^(B-1)-1), 2^(B-1)-1]\n", granularity_name(o.granularity));
  std::printf("  activations (each quantized conv's input): asymmetric uniform, per layer, codes [0, 2^B-1], %s calibration\n",
              calib_name(o.calib));
  std::printf("  rounding %s; the first layer and the FC: %s; biases int32 codes of step s_x*s_w; %zu validation images\n",
              o.adaround ? "of the weights by AdaRound, of the activations half to even" : "half to even",
              o.quantize_first_last ? "quantized" : "FP32", images);
  if (!o.layer_bits.empty()) std::printf("  per layer, over the above: --layer-bits %s\n", o.layer_bits.c_str());
  if (o.keep_fp32 > 0) std::printf("  %d layers kept in FP32 by --keep-fp32 (named above)\n", o.keep_fp32);
  std::printf("\n");
}

void print_table(const Accuracy& fp32, const std::vector<Row>& rows, bool top5) {
  std::printf("%-10s %8s %8s", "bits (W/A)", "top-1", "drop");
  if (top5) std::printf(" %8s %8s", "top-5", "drop");
  std::printf("\n%-10s %7.2f%% %8s", "fp32", fp32.top1, "-");
  if (top5) std::printf(" %7.2f%% %8s", fp32.top5, "-");
  std::printf("\n");
  for (const Row& r : rows) {
    std::printf("%-10s %7.2f%% %8.2f", fmt::format("{}/{}", r.bits, r.act_bits).c_str(), r.acc.top1, fp32.top1 - r.acc.top1);
    if (top5) std::printf(" %7.2f%% %8.2f", r.acc.top5, fp32.top5 - r.acc.top5);
    std::printf("\n");
  }
  std::printf("(drop: FP32 minus quantized, in percentage points)\n");
}

nlohmann::json results_json(const PtqOptions& o, const Source& s, const Calibration& cal, const Accuracy& fp32,
                            const std::vector<Row>& rows, bool top5) {
  nlohmann::json j;
  j["checkpoint"] = s.ckpt;
  j["config"] = s.config;
  j["arch"] = s.arch;
  j["dataset"] = s.dataset;
  j["simulated"] = true;
  j["note"] = "fake quantization: quantize-dequantize in float32, no integer kernels";
  j["weights"] = {{"scheme", "symmetric uniform"}, {"granularity", granularity_name(o.granularity)},
                  {"codes", "[-(2^(B-1)-1), 2^(B-1)-1]"}};
  j["activations"] = {{"scheme", "asymmetric uniform"}, {"granularity", "layer"}, {"codes", "[0, 2^B-1]"},
                      {"calibration", calib_name(o.calib)}, {"calib_batches", cal.batches}, {"calib_images", cal.images}};
  j["rounding"] = o.adaround ? "adaround" : "half to even";
  if (o.adaround)
    j["adaround"] = {{"iters", o.adaround_iters}, {"images", o.adaround_images}, {"target", adaround_target_name(o.adaround_target)}};
  j["biases"] = "int32 codes of step s_x*s_w";
  j["first_last"] = o.quantize_first_last ? "quantized" : "fp32";
  j["val_images"] = fp32.images;
  j["fp32"] = {{"top1", fp32.top1}};
  if (top5) j["fp32"]["top5"] = fp32.top5;
  j["results"] = nlohmann::json::array();
  for (const Row& r : rows) {
    nlohmann::json e = {{"bits", r.bits}, {"act_bits", r.act_bits}, {"top1", r.acc.top1}, {"drop_top1", fp32.top1 - r.acc.top1}};
    if (top5) {
      e["top5"] = r.acc.top5;
      e["drop_top5"] = fp32.top5 - r.acc.top5;
    }
    e["layers"] = r.layers;
    if (!r.adaround.is_null()) e["adaround"] = r.adaround;
    j["results"].push_back(e);
  }
  return j;
}

// --export: the model as it is now (deploy form, quantizers attached) as integer codes.
void export_model(const std::string& path, models::Model& model, const Source& s, const std::string& method,
                  const std::string& granularity) {
  std::map<std::string, std::string> md = {{"dataset", s.dataset}, {"source", s.ckpt}, {"image_size", std::to_string(s.image_size)},
                                           {"resize_size", std::to_string(s.resize_size)}};
  if (!s.data.empty()) md["data"] = s.data;
  if (!s.synsets.empty()) md["synsets"] = s.synsets;
  const Int8Model m = export_int8(model, method, granularity, md);
  deploy::save_int8(path, m);
  std::printf("exported the quantized deploy model (%s, %s weights) to %s\n", method.c_str(), granularity.c_str(),
              path.c_str());
  // Every file runs exactly on every CPU; without VNNI, a layer whose codes could saturate vpmaddubsw runs
  // two convolutions (engine/cpu/int8.h, docs/int8.md): say so where that is this CPU.
  int split = 0, quantized = 0;
  for (const deploy::Int8Layer& l : m.layers) {
    if (!l.quantized) continue;
    quantized++;
    const int max_w = engine::cpu::max_abs_code(l.weight_codes.data(), (int64_t)l.weight_codes.size());
    split += !engine::cpu::int8_single_conv_exact((1 << l.widths.act) - 1, max_w);
  }
  if (split > 0)
    std::printf("note: this CPU has no VNNI: %d of its %d int8 layers will run ./infer's exact split (two convolutions "
                "each, slower than FP32 here); 7-bit weights (--bits 7 --act-bits 8) run one, here and in onnxruntime "
                "(docs/int8.md)\n", split, quantized);
}

// --export of a ClusterQAT run: packed codes and codebooks (deploy/cluster_file.h), the sizes beside, and
// each coded layer's input means on the calibration images (the integer model's bias correction).
void export_compressed(const std::string& path, models::Model& model, const Source& s, const PtqOptions& o, int batch) {
  std::map<std::string, std::string> md = {{"arch", s.arch}, {"dataset", s.dataset}, {"source", s.ckpt},
                                           {"oabn_k", fmt::format("{}", s.oabn_k)}, {"num_classes", std::to_string(s.num_classes)}};
  auto train = open_split(s, true, (size_t)o.calib_batches * batch);  // spread over the training set
  data::Loader loader(*train, batch, /*train=*/false, 0, omp_get_max_threads());  // eval transform
  const auto means = input_means(model, loader, o.calib_batches, s.device);
  std::printf("measured each coded layer's input means on %zu training images (for ./infer's bias correction)\n",
              std::min(train->size(), (size_t)o.calib_batches * batch));
  st::save(path, compress_cluster(model, md, means));
  const deploy::ModelBytes b = deploy::model_bytes(model.arch, layer_widths(model));
  std::printf("exported the compressed deploy model (%d-bit codes and a codebook per layer) to %s: %lld bytes on disk; "
              "weights and biases %lld bytes (FP32 %lld, uniform %d-bit %lld)\n", model.qat()->bits, path.c_str(),
              (long long)std::filesystem::file_size(path), (long long)b.cluster, (long long)b.fp32, model.qat()->bits,
              (long long)b.uniform);
}

// A QAT run: its deploy form at the learned quantizers, against the same deploy model without them.
int evaluate_qat(const PtqOptions& o, const Source& s, models::Model& model, int batch, int threads, bool top5) {
  if (!o.first_quant_option.empty())
    throw std::runtime_error(fmt::format("option {}: {} is a QAT checkpoint ({}): it is evaluated at its learned quantizers; "
                                         "the quantization options are for full-precision checkpoints",
                                         o.first_quant_option, s.ckpt, models::qat_method_name(model.qat()->method)));
  const models::QatConfig& q = *model.qat();
  const bool cluster = q.traits().cluster;
  const std::string method = q.traits().name;
  model.switch_to_deploy();
  auto val = open_split(s, false, o.source.limit_val);
  data::Loader val_loader(*val, batch, /*train=*/false, 0, threads);
  auto t0 = std::chrono::steady_clock::now();
  const Accuracy quantized = train::evaluate(model, val_loader, s.device);
  std::printf("QAT (%s) deploy model at its learned quantizers: top-1 %.2f%% (%.1f s)\n", method.c_str(), quantized.top1,
              seconds_since(t0));
  if (!o.export_path.empty() && cluster) export_compressed(o.export_path, model, s, o, batch);
  else if (!o.export_path.empty()) export_model(o.export_path, model, s, "qat-" + method, q.per_channel ? "channel" : "layer");
  remove_quantizers(model);  // the same deploy model in FP32
  const Accuracy fp32 = train::evaluate(model, val_loader, s.device);

  std::printf("\nQuantization-aware training (%s), simulated (fake quantization in float32; no integer kernels run):\n",
              method.c_str());
  if (cluster)
    std::printf("  weights: ClusterQAT, a learned codebook of 2^B entries per layer (float biases); activations: LSQ, codes [0, 2^B-1]\n");
  else
    std::printf("  weights: LSQ, symmetric, per %s, codes [-(2^(B-1)-1), 2^(B-1)-1]; activations: LSQ, codes [0, 2^B-1]\n",
                q.per_channel ? "channel" : "layer");
  std::printf("  learned %s, no calibration; the first layer and the FC: %s; fp32 is the same deploy model without its\n"
              "  quantizers; %zu validation images\n\n", cluster ? "codebooks" : "steps", q.quantize_first_last ? "quantized" : "FP32", fp32.images);
  const std::vector<Row> rows = {{q.bits, q.act_bits, quantized, nlohmann::json::array()}};
  print_table(fp32, rows, top5);
  if (!o.source.json.empty()) {
    nlohmann::json j = {{"checkpoint", s.ckpt}, {"arch", s.arch}, {"dataset", s.dataset}, {"simulated", true},
                        {"qat", method}, {"granularity", q.per_channel ? "channel" : "layer"}, {"val_images", fp32.images},
                        {"fp32", {{"top1", fp32.top1}}}, {"results", {{{"bits", q.bits}, {"act_bits", q.act_bits},
                        {"top1", quantized.top1}, {"drop_top1", fp32.top1 - quantized.top1}}}}};
    if (top5) {
      j["fp32"]["top5"] = fp32.top5;
      j["results"][0]["top5"] = quantized.top5;
    }
    write_json(o.source.json, j.dump(2) + "\n");
    std::printf("wrote %s\n", o.source.json.c_str());
  }
  return 0;
}

// --sensitivity: per bit width, each layer's two logit KLs (quant/sensitivity.h) on o.sensitivity_images
// training images, sorted; --sensitivity-check adds each layer alone's validation top-1 and the rank
// correlation of the KL with the top-1 drop.
// The sensitivity measure's images: o.sensitivity_images training images spread over the set (eval
// transform), in batches.
std::vector<Tensor> sensitivity_images(const PtqOptions& o, const Source& s, int batch, size_t& n) {
  auto train = open_split(s, true, (size_t)o.sensitivity_images);
  data::Loader loader(*train, batch, /*train=*/false, 0, omp_get_max_threads());
  loader.start_epoch(0);
  std::vector<Tensor> images;
  Tensor x, y;
  n = 0;
  while (const data::Batch* b = loader.next()) {
    data::to_tensors(*b, s.device, x, y);
    images.push_back(x);
    n += b->n;
  }
  return images;
}

// --keep-fp32 N: of c's quantized layers, the N whose float version brings the otherwise quantized model's
// logits closest to FP32 (the smallest "all but it" KL of the sensitivity measure at c's widths) stay FP32.
// Not the largest "alone" KL: measured on repvgg-cifar at W4/A8, keeping those did not help (docs/sensitivity.md).
void keep_most_sensitive_fp32(const PtqOptions& o, const Source& s, models::Model& model, const Calibration& cal,
                              QuantConfig& c, int batch) {
  size_t n = 0;
  const std::vector<Tensor> images = sensitivity_images(o, s, batch, n);
  const std::vector<LayerSensitivity> sens = layer_sensitivity(model, cal, c, images, logits_of(model, images));
  const size_t count = sens.size();
  std::vector<LayerBits> widths;
  for (size_t i = 0; i < count; i++) widths.push_back(bits_of(i, count, c));
  c.layers = widths;
  std::vector<size_t> order;
  for (size_t i = 0; i < count; i++)
    if (c.layers[i].weight > 0) order.push_back(i);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return sens[a].kept < sens[b].kept; });
  std::string kept;
  for (size_t k = 0; k < order.size() && k < (size_t)o.keep_fp32; k++) {
    c.layers[order[k]] = {};
    kept += (kept.empty() ? "" : ", ") + sens[order[k]].name;
  }
  std::printf("W%d/A%d: kept in FP32, the %d whose float version helps most (logit KL on %zu training images): %s\n", c.weight_bits,
              c.act_bits, o.keep_fp32, n, kept.c_str());
}

int run_sensitivity(const PtqOptions& o, const Source& s, models::Model& model, const Calibration& cal,
                    data::Loader& val_loader, int batch) {
  size_t n = 0;
  const std::vector<Tensor> images = sensitivity_images(o, s, batch, n);
  const std::vector<float> reference = logits_of(model, images);
  Accuracy fp32;
  if (o.sensitivity_check) fp32 = train::evaluate(model, val_loader, s.device);
  nlohmann::json results = nlohmann::json::array();
  std::vector<std::vector<Bar>> panels;
  for (size_t k = 0; k < o.bits.size(); k++) {
    const QuantConfig c = quant_config(o, k, model);
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<LayerSensitivity> layers = layer_sensitivity(model, cal, c, images, reference);
    const double measure_s = seconds_since(t0);
    double rho = NAN;
    if (o.sensitivity_check) {
      std::vector<double> kl, drop;
      for (size_t i = 0; i < layers.size(); i++) {
        QuantConfig one = c;
        one.layers.assign(layers.size(), LayerBits{});
        one.layers[i] = {c.weight_bits, c.act_bits};
        attach_quantizers(model, one, cal);
        layers[i].alone_top1 = train::evaluate(model, val_loader, s.device).top1;
        kl.push_back(layers[i].alone);
        drop.push_back(fp32.top1 - layers[i].alone_top1);
      }
      remove_quantizers(model);
      rho = spearman(kl, drop);
    }
    panels.emplace_back();
    for (const LayerSensitivity& l : layers) panels.back().push_back({l.alone, l.identity});
    std::vector<LayerSensitivity> sorted = layers;
    std::stable_sort(sorted.begin(), sorted.end(), [](const auto& a, const auto& b) { return a.alone > b.alone; });
    std::printf("\nsensitivity W%d/A%d (%s weight steps, %s calibration): mean KL of the logits from FP32 on %zu training "
                "images, %.1f s\n", c.weight_bits, c.act_bits, granularity_name(c.granularity), calib_name(c.calib), n, measure_s);
    std::printf("  rank  layer       identity  alone quantized  all but it quantized%s\n",
                o.sensitivity_check ? "  top-1 alone" : "");
    nlohmann::json js = nlohmann::json::array();
    for (size_t r = 0; r < sorted.size(); r++) {
      const LayerSensitivity& l = sorted[r];
      std::printf("  %4zu  %-10s  %-8s  %15.6f  %20.6f", r + 1, l.name.c_str(), l.identity ? "yes" : "", l.alone, l.kept);
      if (o.sensitivity_check) std::printf("  %10.2f%%", l.alone_top1);
      std::printf("\n");
      nlohmann::json e = {{"name", l.name}, {"identity", l.identity}, {"alone_kl", l.alone}, {"kept_kl", l.kept}};
      if (o.sensitivity_check) e["alone_top1"] = l.alone_top1;
      js.push_back(e);
    }
    if (o.sensitivity_check)
      std::printf("  FP32 top-1 %.2f%% on %zu validation images; Spearman's rho of the KL and the top-1 drop: %.3f\n",
                  fp32.top1, fp32.images, rho);
    nlohmann::json r = {{"bits", c.weight_bits}, {"act_bits", c.act_bits}, {"images", n}, {"layers", js}};
    if (o.sensitivity_check) r["fp32_top1"] = fp32.top1, r["spearman"] = rho;
    results.push_back(r);
  }
  if (!o.plot.empty()) {
    write_bars_png(o.plot, panels);
    std::printf("wrote %s (a panel per bit width, layers in network order, log scale; identity-branch blocks orange)\n",
                o.plot.c_str());
  }
  if (!o.source.json.empty()) {
    const nlohmann::json j = {{"checkpoint", s.ckpt}, {"arch", s.arch}, {"dataset", s.dataset},
                              {"granularity", granularity_name(o.granularity)}, {"calibration", calib_name(o.calib)},
                              {"measure", "mean KL(softmax(fp32 logits) || softmax(quantized logits)) over training images"},
                              {"sensitivity", results}};
    write_json(o.source.json, j.dump(2) + "\n");
    std::printf("wrote %s\n", o.source.json.c_str());
  }
  return 0;
}

}  // namespace

int run_ptq(const std::vector<std::string>& args) {
  const PtqOptions o = parse_ptq_options(args);
  if (o.help) {
    std::fputs(ptq_help().c_str(), stdout);
    return 0;
  }
  std::printf("cpu: %s\n", engine::cpu_summary().c_str());
  Source s = resolve_source(o.source);
  std::printf("ptq: %s\n", describe(s).c_str());
  const int batch = o.source.batch_size > 0 ? o.source.batch_size : kPtqBatch;
  const int threads = omp_get_max_threads();
  const bool top5 = s.dataset == "imagenet";

  auto model = load_model(s);
  // a QAT run is evaluated at its learned quantizers; a --qat bnest run trained the full-precision model
  if (model->qat() && !model->qat()->traits().full_precision) return evaluate_qat(o, s, *model, batch, threads, top5);
  if (o.bits.empty()) throw std::runtime_error(fmt::format("--bits B[,B...] is required for {} (e.g. --bits 8,6,4)", s.ckpt));
  if (!s.deploy_form()) model->switch_to_deploy();  // one 3x3 conv with bias per block
  s.file = {};                                      // the model holds the weights now

  auto val = open_split(s, false, o.source.limit_val);
  data::Loader val_loader(*val, batch, /*train=*/false, 0, threads);

  auto t0 = std::chrono::steady_clock::now();
  const Calibration cal = calibrate_source(s, *model, o, batch);
  std::printf("calibrated %s on %d batches (%zu training images spread over the set, without augmentation) in %.1f s\n",
              calib_name(o.calib), cal.batches, cal.images, seconds_since(t0));

  if (o.sensitivity) return run_sensitivity(o, s, *model, cal, val_loader, batch);
  t0 = std::chrono::steady_clock::now();
  const Accuracy fp32 = train::evaluate(*model, val_loader, s.device);
  std::printf("FP32 deploy model: top-1 %.2f%% on %zu validation images (%.1f s)\n", fp32.top1, fp32.images, seconds_since(t0));

  std::vector<Row> rows;
  for (size_t k = 0; k < o.bits.size(); k++) {
    QuantConfig c = quant_config(o, k, *model);
    if (o.keep_fp32 > 0) keep_most_sensitive_fp32(o, s, *model, cal, c, batch);
    t0 = std::chrono::steady_clock::now();
    const std::vector<Range> ranges = attach_quantizers(*model, c, cal);
    std::vector<Tensor> weights;  // AdaRound moves them onto its grid points: restored for the next bit width
    nlohmann::json rounding;  // null without AdaRound
    if (o.adaround) {
      for (const models::QuantLayer& l : model->quant_layers()) weights.push_back(l.weight.clone());
      rounding = run_adaround(o, s, *model, c, batch);
    }
    const Accuracy acc = train::evaluate(*model, val_loader, s.device);
    rows.push_back({c.weight_bits, c.act_bits, acc, layers_json(*model, c, ranges), rounding});
    std::printf("W%d/A%d: top-1 %.2f%% (%.1f s)\n", c.weight_bits, c.act_bits, acc.top1, seconds_since(t0));
    if (!o.export_path.empty())
      export_model(o.export_path, *model, s, std::string("ptq-") + calib_name(o.calib) + (o.adaround ? "-adaround" : ""),
                   granularity_name(o.granularity));
    const std::vector<models::QuantLayer> layers = model->quant_layers();
    for (size_t i = 0; i < weights.size(); i++) Tensor(layers[i].weight).copy_(weights[i]);
  }

  print_ptq_header(o, fp32.images);
  print_table(fp32, rows, top5);
  if (!o.source.json.empty()) {
    write_json(o.source.json, results_json(o, s, cal, fp32, rows, top5).dump(2) + "\n");
    std::printf("wrote %s\n", o.source.json.c_str());
  }
  return 0;
}

}  // namespace quant
