#include "deploy/int8_model.h"

#include <fmt/format.h>

#include <cmath>
#include <cstdio>
#include <algorithm>
#include <functional>
#include <limits>
#include <set>

#include "engine/scalar_math.h"
#include "engine/ops.h"

namespace deploy {

static const char* const kFormat = "repq-int8";
// 2: each layer's widths (metadata "layer_bits"); 1, still read: one "bits" and "act_bits" for every quantized layer
static const char* const kFormatVersion = "2";

std::vector<int64_t> Int8Layer::weight_shape() const {
  if (fc) return {out, in};
  return {out, in / groups, kernel, kernel};
}

std::vector<Int8Layer> int8_layers(const models::ArchConfig& arch) {
  std::vector<Int8Layer> layers;
  for (const models::LayerSpec& s : models::layer_specs(arch)) {
    Int8Layer l;
    static_cast<models::LayerSpec&>(l) = s;
    layers.push_back(l);
  }
  return layers;
}

void set_input(Int8Layer& l, float s_x, int zero_point, int q_min) {
  l.quantized = true;
  l.input_scale = s_x;
  l.input_zero_point = zero_point - q_min;
}

void set_weight_codes(Int8Layer& l, const std::vector<float>& w, int q_min, int q_max) {
  const size_t per_row = w.size() / l.out;
  l.weight_codes.resize(w.size());
  for (size_t i = 0; i < w.size(); i++)
    l.weight_codes[i] = (int8_t)engine::fake_quant_code(w[i], l.w_scale((int)(i / per_row)), 0.0f, (float)q_min, (float)q_max);
}

std::vector<float> cluster_weight_scales(const std::vector<float>& w, int out) {
  const size_t per_row = w.size() / out;
  std::vector<float> scales(out);
  for (int o = 0; o < out; o++) {
    float m = 0;
    for (size_t k = 0; k < per_row; k++) m = std::max(m, std::fabs(w[o * per_row + k]));
    scales[o] = m > 0 ? m / 127 : 1.0f;  // an all-zero channel: every code 0 on any grid
  }
  return scales;
}

std::vector<float> cluster_bias_correction(const Int8Layer& l, const std::vector<float>& w, const std::vector<float>& mean) {
  const size_t per_row = w.size() / l.out, taps = l.fc ? 1 : size_t(l.kernel) * l.kernel;
  ENGINE_CHECK(mean.size() == l.in * taps, fmt::format("layer {}: {} input means for {} input channels × {} taps", l.name,
                                                       mean.size(), l.in, taps));
  const int in_per_group = l.in / l.groups, out_per_group = l.out / l.groups;
  std::vector<float> delta(l.out);
  for (int o = 0; o < l.out; o++) {
    double sum = 0;
    for (size_t k = 0; k < per_row; k++) {
      const size_t i = o * per_row + k;
      const size_t c = size_t(o / out_per_group) * in_per_group + k / taps;
      sum += (double(l.w_scale(o)) * l.weight_codes[i] - w[i]) * mean[c * taps + k % taps];
    }
    delta[o] = float(sum);
  }
  return delta;
}

void set_cluster_codes(Int8Layer& l, const std::vector<float>& entries, std::vector<float> bias,
                       const std::vector<float>* mean) {
  l.weight_scale = cluster_weight_scales(entries, l.out);
  set_weight_codes(l, entries, -127, 127);
  if (mean) {
    const std::vector<float> delta = cluster_bias_correction(l, entries, *mean);
    for (int o = 0; o < l.out; o++) bias[o] -= delta[o];
  }
  l.bias_codes = engine::bias_codes(bias, l.input_scale, l.weight_scale, "layer " + l.name + " bias").codes;
}

// --- the file ---------------------------------------------------------------------------------------------

void save_int8(const std::string& path, const Int8Model& m) {
  st::File f;
  f.metadata = m.metadata;
  f.metadata["format"] = kFormat;
  f.metadata["format_version"] = kFormatVersion;
  f.metadata["arch"] = m.arch.name;
  f.metadata["num_classes"] = std::to_string(m.arch.num_classes);
  // the widths too: models made at other widths (models::cifar_config) share their arch's name
  const auto& a = m.arch.width_multiplier;
  f.metadata["width_multiplier"] = fmt::format("{:.17g},{:.17g},{:.17g},{:.17g}", a[0], a[1], a[2], a[3]);
  f.metadata.erase("bits"), f.metadata.erase("act_bits");  // a version 1 file's, read into m.metadata
  std::vector<models::LayerBits> widths;
  for (const Int8Layer& l : m.layers) widths.push_back(l.quantized ? l.widths : models::LayerBits{});
  f.metadata["layer_bits"] = models::layer_widths(widths);
  f.metadata["method"] = m.method;
  f.metadata["granularity"] = m.granularity;
  for (const Int8Layer& l : m.layers) {
    if (!l.quantized) {
      f.tensors[l.name + ".weight"] = st::Entry::of(l.weight_shape(), l.weight);
      f.tensors[l.name + ".bias"] = st::Entry::of({l.out}, l.bias);
      continue;
    }
    f.tensors[l.name + ".weight"] = st::Entry::of(l.weight_shape(), l.weight_codes);
    f.tensors[l.name + ".weight_scale"] = st::Entry::of({(int64_t)l.weight_scale.size()}, l.weight_scale);
    f.tensors[l.name + ".bias"] = st::Entry::of({l.out}, l.bias_codes);
    f.tensors[l.name + ".input_scale"] = st::Entry::of<float>({1}, &l.input_scale);
    const int32_t z = l.input_zero_point;
    f.tensors[l.name + ".input_zero_point"] = st::Entry::of<int32_t>({1}, &z);
  }
  st::save(path, f);
}

namespace {

[[noreturn]] void bad(const std::string& path, const std::string& tensor, const std::string& what) {
  engine::fail(fmt::format("file {}: tensor '{}' {}", path, tensor, what));
}

// Every value finite and > 0 (a scale).
void check_scales(const std::vector<float>& v, const std::string& path, const std::string& tensor) {
  for (size_t i = 0; i < v.size(); i++)
    if (!std::isfinite(v[i]) || !(v[i] > 0))
      bad(path, tensor, fmt::format("holds {} at [{}]: a scale must be finite and > 0", v[i], i));
}

template <class T>
void check_finite(const std::vector<T>& v, const std::string& path, const std::string& tensor) {
  for (size_t i = 0; i < v.size(); i++)
    if (!std::isfinite(v[i])) bad(path, tensor, fmt::format("holds {} at [{}]", v[i], i));
}

const std::string& metadata_string(const std::map<std::string, std::string>& md, const std::string& path,
                                   const std::string& key) {
  auto it = md.find(key);
  if (it == md.end()) engine::fail(fmt::format("file {}: metadata \"{}\" is missing", path, key));
  return it->second;
}

// Each layer's widths: version 2's "layer_bits" (one entry per layer, 2..8 where quantized), or version 1's
// "bits" and "act_bits" for every layer (which of them is quantized, its weight's dtype says).
std::vector<models::LayerBits> layer_widths(const std::map<std::string, std::string>& md, const std::string& path,
                                            const std::string& version, const std::vector<Int8Layer>& layers) {
  if (version == "1") {
    const models::LayerBits all{(int)st::metadata_int(md, path, "bits", 2, 8), (int)st::metadata_int(md, path, "act_bits", 2, 8)};
    return std::vector<models::LayerBits>(layers.size(), all);
  }
  const std::string where = fmt::format("file {}: metadata \"layer_bits\"", path);
  std::vector<models::LayerBits> w;
  try {
    w = models::parse_layer_widths(metadata_string(md, path, "layer_bits"), where);
  } catch (const std::runtime_error& e) {
    engine::fail(e.what());
  }
  if (w.size() != layers.size()) engine::fail(fmt::format("{} has {} entries for the {} layers", where, w.size(), layers.size()));
  for (size_t i = 0; i < w.size(); i++)
    if (w[i].weight != 0 && (w[i].weight < 2 || w[i].weight > 8 || w[i].act < 2 || w[i].act > 8))
      engine::fail(fmt::format("{}: layer {} is {}/{}, an integer layer takes 2..8 bits each", where, layers[i].name, w[i].weight,
                               w[i].act));
  return w;
}

}  // namespace

Int8Model load_int8(const std::string& path) { return load_int8(st::load(path), path); }

Int8Model load_int8(const st::File& f, const std::string& path) {
  const auto& md = f.metadata;
  auto format = md.find("format");
  if (format == md.end() || format->second != kFormat)
    engine::fail(fmt::format("file {}: not a quantized model (metadata \"format\" is not \"{}\"; write one with "
                             "./ptq --export)", path, kFormat));
  const std::string& version = metadata_string(md, path, "format_version");
  if (version != "1" && version != kFormatVersion)
    engine::fail(fmt::format("file {}: format_version {}, this program reads 1 and {}", path, st::cut(version), kFormatVersion));
  Int8Model m;
  m.metadata = md;
  try {
    m.arch = models::arch_config(metadata_string(md, path, "arch"));
  } catch (const std::exception& e) {
    engine::fail(fmt::format("file {}: {}", path, e.what()));
  }
  m.arch.num_classes = (int)st::metadata_int(md, path, "num_classes", 1, 1 << 20);
  const std::string& multipliers = metadata_string(md, path, "width_multiplier");
  auto& a = m.arch.width_multiplier;
  if (std::sscanf(multipliers.c_str(), "%lf,%lf,%lf,%lf", &a[0], &a[1], &a[2], &a[3]) != 4 ||
      !(a[0] > 0 && a[1] > 0 && a[2] > 0 && a[3] > 0 && a[0] <= 16 && a[1] <= 16 && a[2] <= 16 && a[3] <= 16))
    engine::fail(fmt::format("file {}: metadata \"width_multiplier\" is '{}', expected 4 numbers in (0, 16]", path,
                             st::cut(multipliers)));
  m.method = metadata_string(md, path, "method");
  m.granularity = metadata_string(md, path, "granularity");
  if (m.granularity != "layer" && m.granularity != "channel")
    engine::fail(fmt::format("file {}: metadata \"granularity\" is '{}', expected layer or channel", path, m.granularity));
  std::set<std::string> used;
  auto get = [&](const std::string& name, st::DType dtype, const std::vector<int64_t>& shape) -> const st::Entry& {
    used.insert(name);
    return st::require(f, name, dtype, shape, path);
  };
  m.layers = int8_layers(m.arch);
  const std::vector<models::LayerBits> widths = layer_widths(md, path, version, m.layers);
  bool any = false;
  for (size_t i = 0; i < m.layers.size(); i++) {
    Int8Layer& l = m.layers[i];
    const std::string w_name = l.name + ".weight";
    auto it = f.tensors.find(w_name);
    if (it == f.tensors.end()) bad(path, w_name, "is missing");
    if (it->second.dtype == st::DType::F32) {  // an FP32 layer
      if (version != "1" && widths[i].weight != 0)
        bad(path, w_name, fmt::format("is F32 where metadata \"layer_bits\" gives the layer {}/{}", widths[i].weight, widths[i].act));
      l.weight = get(w_name, st::DType::F32, l.weight_shape()).to_vector<float>();
      l.bias = get(l.name + ".bias", st::DType::F32, {l.out}).to_vector<float>();
      check_finite(l.weight, path, w_name);
      check_finite(l.bias, path, l.name + ".bias");
      continue;
    }
    if (it->second.dtype != st::DType::I8)
      bad(path, w_name, fmt::format("has dtype {}, expected I8 (a quantized layer) or F32", st::dtype_name(it->second.dtype)));
    if (widths[i].weight == 0)
      bad(path, w_name, "is I8 where metadata \"layer_bits\" gives the layer fp32");
    l.quantized = any = true;
    l.widths = widths[i];
    const int q_w = (1 << (l.widths.weight - 1)) - 1, q_x = (1 << l.widths.act) - 1;
    l.weight_codes = get(w_name, st::DType::I8, l.weight_shape()).to_vector<int8_t>();
    for (size_t k = 0; k < l.weight_codes.size(); k++)
      if (std::abs((int)l.weight_codes[k]) > q_w)
        bad(path, w_name, fmt::format("holds the code {} at [{}], outside [-{}, {}] of {}-bit weights", l.weight_codes[k],
                                      k, q_w, q_w, l.widths.weight));
    const std::string s_name = l.name + ".weight_scale";
    auto s = f.tensors.find(s_name);
    const int64_t n_scales = m.granularity == "channel" ? l.out : 1;
    if (s != f.tensors.end() && s->second.shape != std::vector<int64_t>{n_scales})
      bad(path, s_name, fmt::format("has shape {}, expected [{}] (one scale per {})", st::shape_str(s->second.shape),
                                    n_scales, m.granularity == "channel" ? "output channel" : "layer"));
    l.weight_scale = get(s_name, st::DType::F32, {n_scales}).to_vector<float>();
    check_scales(l.weight_scale, path, s_name);
    l.bias_codes = get(l.name + ".bias", st::DType::I32, {l.out}).to_vector<int32_t>();
    l.input_scale = get(l.name + ".input_scale", st::DType::F32, {1}).to_vector<float>()[0];
    check_scales({l.input_scale}, path, l.name + ".input_scale");
    l.input_zero_point = get(l.name + ".input_zero_point", st::DType::I32, {1}).to_vector<int32_t>()[0];
    // after a ReLU (every layer's input but the image) the range starts at 0: z = 0, which the integer kernels
    // assume
    const bool image = l.source < 0;
    const int z_max = image ? q_x : 0;
    if (l.input_zero_point < 0 || l.input_zero_point > z_max)
      bad(path, l.name + ".input_zero_point",
          fmt::format("is {}, expected {}", l.input_zero_point,
                      image ? fmt::format("a code in [0, {}]", q_x) : std::string("0 (the input follows a ReLU)")));
  }
  if (!any) engine::fail(fmt::format("file {}: no layer is quantized (every weight is F32)", path));
  for (const auto& [name, e] : f.tensors)
    if (!used.count(name)) bad(path, name, "is not part of a quantized " + m.arch.name);
  return m;
}

int64_t weight_bytes(const Int8Model& m) {
  int64_t bytes = 0;
  for (const Int8Layer& l : m.layers)
    bytes += l.quantized ? (int64_t)(l.weight_codes.size() + 4 * (l.bias_codes.size() + l.weight_scale.size() + 2))
                         : (int64_t)(4 * (l.weight.size() + l.bias.size()));
  return bytes;
}

std::string width_summary(const Int8Model& m) {
  std::vector<std::pair<models::LayerBits, int>> counts;  // in order of first use
  for (const Int8Layer& l : m.layers) {
    if (!l.quantized) continue;
    auto it = std::find_if(counts.begin(), counts.end(), [&](const auto& c) { return c.first == l.widths; });
    if (it == counts.end()) counts.push_back({l.widths, 1});
    else it->second++;
  }
  std::string s;
  for (const auto& [w, n] : counts)
    s += fmt::format("{}W{}/A{}{}", s.empty() ? "" : ", ", w.weight, w.act, counts.size() > 1 ? fmt::format(" x{}", n) : "");
  return s;
}

}  // namespace deploy
