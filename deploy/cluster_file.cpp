#include "deploy/cluster_file.h"

#include <fmt/format.h>

#include <cmath>
#include <set>

#include "engine/tensor.h"

namespace deploy {

using engine::fail;

static bool ends_with(const std::string& s, const std::string& t) {
  return s.size() >= t.size() && s.compare(s.size() - t.size(), t.size(), t) == 0;
}

std::vector<uint8_t> pack_codes(const std::vector<uint8_t>& codes, int bits) {
  ENGINE_CHECK(bits >= 1 && bits <= 8, "pack_codes: " + std::to_string(bits) + " bits");
  std::vector<uint8_t> out((codes.size() * bits + 7) / 8, 0);
  for (size_t i = 0; i < codes.size(); i++) {
    ENGINE_CHECK(codes[i] < (1u << bits), "pack_codes: code " + std::to_string(codes[i]) + " has more than " + std::to_string(bits) + " bits");
    for (int j = 0; j < bits; j++)
      if (codes[i] >> j & 1) {
        const size_t bit = i * bits + j;
        out[bit / 8] |= uint8_t(1u << (bit % 8));
      }
  }
  return out;
}

std::vector<uint8_t> unpack_codes(const std::vector<uint8_t>& packed, int bits, size_t n) {
  ENGINE_CHECK(packed.size() == (n * bits + 7) / 8, std::to_string(packed.size()) + " bytes for " + std::to_string(n) + " codes of " +
                                                        std::to_string(bits) + " bits, expected " + std::to_string((n * bits + 7) / 8));
  std::vector<uint8_t> codes(n, 0);
  for (size_t i = 0; i < n; i++)
    for (int j = 0; j < bits; j++) {
      const size_t bit = i * bits + j;
      codes[i] |= uint8_t((packed[bit / 8] >> (bit % 8) & 1) << j);
    }
  return codes;
}

const char* const kClusterFormat = "cluster-codes";

std::string codebook_name(const std::string& layer) {
  if (layer == "linear" || layer == "fc") return layer + "_weight_quant.codebook";
  const std::string suffix = ".rbr_reparam";
  ENGINE_CHECK(layer.size() > suffix.size() && layer.compare(layer.size() - suffix.size(), suffix.size(), suffix) == 0,
               "'" + layer + "' is not a block's rbr_reparam nor the FC");
  return layer.substr(0, layer.size() - suffix.size()) + ".weight_quant.codebook";
}

const char* const kInputMeanSuffix = ".input_mean";

bool is_compressed(const st::File& f) {
  auto it = f.metadata.find("format");
  return it != f.metadata.end() && it->second == kClusterFormat;
}

std::map<std::string, std::vector<float>> cluster_input_means(const st::File& f, const std::string& path) {
  std::map<std::string, std::vector<float>> means;
  for (auto& [name, e] : f.tensors) {
    if (!ends_with(name, kInputMeanSuffix)) continue;
    if (e.dtype != st::DType::F32 || e.shape.size() != 1) fail(path + ": tensor '" + name + "' is not F32 [channels × taps]");
    std::vector<float> v = e.to_vector<float>();
    for (float x : v)
      if (!std::isfinite(x)) fail(path + ": tensor '" + name + "' holds a non-finite mean");
    means[name.substr(0, name.size() - std::string(kInputMeanSuffix).size())] = std::move(v);
  }
  return means;
}

st::File decompress_cluster(const st::File& f, const std::string& path) {
  // the codebooks' 2^bits entries; with per-layer widths (metadata "layer_bits"), each its own
  const bool per_layer = f.metadata.count("layer_bits") > 0;
  const int model_bits = (int)st::metadata_int(f.metadata, path, "bits", 1, 8);
  st::File out;
  out.metadata = f.metadata;
  for (auto& [name, e] : f.tensors) {
    if (ends_with(name, ".weight_shape") || ends_with(name, kInputMeanSuffix)) continue;
    if (!ends_with(name, ".weight_codes")) {
      out.tensors[name] = e;
      continue;
    }
    const std::string layer = name.substr(0, name.size() - std::string(".weight_codes").size());
    auto shape_it = f.tensors.find(layer + ".weight_shape");
    if (shape_it == f.tensors.end() || shape_it->second.dtype != st::DType::I64 || shape_it->second.shape.size() != 1)
      fail(path + ": tensor '" + name + "' without an I64 [dims] tensor '" + layer + ".weight_shape'");
    const std::vector<int64_t> shape = shape_it->second.to_vector<int64_t>();
    int64_t n = 1;
    for (int64_t d : shape) {
      if (d < 1 || d > (int64_t(1) << 31)) fail(path + ": tensor '" + layer + ".weight_shape' has a dimension " + std::to_string(d));
      n *= d;
    }
    const std::string cb_name = codebook_name(layer);
    auto cb_it = f.tensors.find(cb_name);
    if (cb_it == f.tensors.end() || cb_it->second.dtype != st::DType::F32) fail(path + ": no F32 tensor '" + cb_name + "' for '" + name + "'");
    int bits = model_bits;
    if (per_layer) {
      bits = 1;
      while (bits < 8 && (int64_t(1) << bits) < cb_it->second.numel()) bits++;
    }
    const size_t entries = size_t(1) << bits;
    if ((size_t)cb_it->second.numel() != entries)
      fail(path + ": tensor '" + cb_name + "' has " + std::to_string(cb_it->second.numel()) + " entries, expected 2^" +
           std::to_string(bits) + " = " + std::to_string(entries) + (per_layer ? " (a power of two up to 256)" : " (metadata bits)"));
    if (e.dtype != st::DType::U8 || e.shape.size() != 1) fail(path + ": tensor '" + name + "' is not U8 [bytes]");
    std::vector<uint8_t> codes;
    try {
      codes = unpack_codes(e.bytes, bits, (size_t)n);
    } catch (const std::exception& ex) {
      fail(path + ": tensor '" + name + "': " + ex.what());
    }
    const std::vector<float> codebook = cb_it->second.to_vector<float>();
    std::vector<float> w(codes.size());
    for (size_t i = 0; i < codes.size(); i++) w[i] = codebook[codes[i]];  // a b-bit code is < 2^b
    out.tensors[layer + ".weight"] = st::Entry::of<float>(shape, w.data());
  }
  return out;
}

ModelBytes model_bytes(const models::ArchConfig& arch, const std::vector<int>& widths) {
  std::vector<std::pair<int64_t, int64_t>> layers;  // (weights, biases), the first layer ... the FC
  for (const models::LayerSpec& b : models::layer_specs(arch))
    layers.push_back({(int64_t)b.out * (b.in / b.groups) * b.kernel * b.kernel, b.out});
  ENGINE_CHECK(widths.size() == layers.size(), std::to_string(widths.size()) + " widths for " + std::to_string(layers.size()) + " layers");
  ModelBytes s;
  for (size_t i = 0; i < layers.size(); i++) {
    const auto [n, o] = layers[i];
    const int64_t fp = 4 * (n + o);
    const int bits = widths[i];
    s.fp32 += fp;
    if (bits == 0) {
      s.uniform += fp;
      s.cluster += fp;
      continue;
    }
    const int64_t codes = (n * bits + 7) / 8, input_step = 4;
    s.uniform += codes + 4 + 4 * o + input_step;
    s.cluster += codes + 4 * (int64_t(1) << bits) + 4 * o + input_step;
  }
  return s;
}


namespace {

// The F32 tensor `name` of `state` with `shape`, every value finite; marked used.
std::vector<float> finite_f32(const st::File& state, const std::string& name, const std::vector<int64_t>& shape,
                              const std::string& path, std::set<std::string>& used) {
  used.insert(name);
  std::vector<float> v = st::require(state, name, st::DType::F32, shape, path).to_vector<float>();
  for (size_t i = 0; i < v.size(); i++)
    if (!std::isfinite(v[i])) fail(fmt::format("file {}: tensor '{}' holds {} at [{}]", path, name, v[i], i));
  return v;
}

}  // namespace

Int8Model int8_from_cluster_file(const st::File& f, const std::string& path) {
  const st::File state = decompress_cluster(f, path);
  const auto& md = f.metadata;
  Int8Model m;
  try {
    m.arch = models::arch_config(md.count("arch") ? md.at("arch") : "");
  } catch (const std::exception& e) {
    fail(fmt::format("file {}: metadata \"arch\": {}", path, e.what()));
  }
  m.arch.num_classes = (int)st::metadata_int(md, path, "num_classes", 1, 1 << 20);
  // each quantized layer's input width: metadata "layer_bits" ("fp32,4/8,...": codebook/input) or "act_bits"
  const int act_bits = (int)st::metadata_int(md, path, "act_bits", 1, 16);
  std::vector<models::LayerBits> widths;
  if (auto lb = md.find("layer_bits"); lb != md.end()) {
    try {
      widths = models::parse_layer_widths(lb->second, fmt::format("file {}: metadata \"layer_bits\"", path));
    } catch (const std::runtime_error& e) {
      fail(e.what());
    }
  }
  m.method = "qat-cluster", m.granularity = "channel";
  for (const char* key : {"dataset", "data", "synsets", "image_size", "resize_size"})
    if (md.count(key)) m.metadata[key] = md.at(key);
  m.metadata["source"] = path;
  m.metadata["cluster_bits"] = md.at("bits");  // read above
  const std::map<std::string, std::vector<float>> means = cluster_input_means(f, path);
  m.metadata["cluster_corrected"] = std::to_string(means.size());

  std::set<std::string> used;
  m.layers = int8_layers(m.arch);
  if (!widths.empty() && widths.size() != m.layers.size())
    fail(fmt::format("file {}: metadata \"layer_bits\" has {} entries for the {} layers", path, widths.size(), m.layers.size()));
  bool any = false;
  for (size_t i = 0; i < m.layers.size(); i++) {
    Int8Layer& l = m.layers[i];
    // the state-dict names of the deploy conv (the FC) and of its quantizers, models/repvgg.h
    const std::string conv = l.fc ? l.name : l.name + ".rbr_reparam";
    auto act_of = [](const Int8Layer& k) { return k.fc ? k.name + "_act_quant" : k.name + ".act_quant"; };
    // a coded layer that reads another's input (ResNet's downsample) quantizes it with that one's quantizer
    const size_t owner = models::input_owner(m.layers, i);
    const std::string act = act_of(m.layers[owner < i && state.tensors.count(codebook_name(conv)) ? owner : i]);
    std::vector<float> w = finite_f32(state, conv + ".weight", l.weight_shape(), path, used);
    std::vector<float> b = finite_f32(state, conv + ".bias", {l.out}, path, used);
    if (!state.tensors.count(act + ".step")) {  // an FP32 layer
      l.weight = std::move(w), l.bias = std::move(b);
      continue;
    }
    const int a = widths.empty() ? act_bits : widths[i].act;
    if (a < 2 || a > 8) fail(fmt::format("file {}: layer {}: {}-bit activations: integer inference takes 2..8 bits", path, l.name, a));
    const float s_x = finite_f32(state, act + ".step", {1}, path, used)[0];
    if (!(s_x > 0)) fail(fmt::format("file {}: tensor '{}.step' is {}, expected a step > 0", path, act, s_x));
    const std::string cb = codebook_name(conv);
    for (const std::string& flag : {act + ".init_state", cb.substr(0, cb.rfind('.')) + ".init_state"})
      if (finite_f32(state, flag, {1}, path, used)[0] != 1.0f)
        fail(fmt::format("file {}: tensor '{}' is not 1: the quantizer was never set (a run that trained no batch?)", path, flag));
    used.insert(cb);
    if (!f.tensors.count(conv + ".weight_codes")) fail(fmt::format("file {}: layer {} has an input step but no '{}.weight_codes'", path, l.name, conv));
    // the image's codes are signed (z = 0 in [−2^(A−1), 2^(A−1) − 1]), those after a ReLU unsigned
    set_input(l, s_x, 0, i == 0 ? -(1 << (a - 1)) : 0);
    l.widths = {8, a};  // the codes span the s8 range whatever the codebook's bits
    const auto mean = means.find(l.name);
    try {
      set_cluster_codes(l, w, b, mean == means.end() ? nullptr : &mean->second);
    } catch (const std::exception& e) {
      fail(fmt::format("file {}: {}", path, e.what()));
    }
    any = true;
  }
  if (!any) fail(fmt::format("file {}: no layer is quantized (no act_quant.step tensor)", path));
  for (const auto& [name, e] : state.tensors)
    if (!used.count(name)) fail(fmt::format("file {}: tensor '{}' is not part of a compressed {}", path, name, m.arch.name));
  return m;
}

Int8Model load_deploy_model(const std::string& path) {
  const st::File f = st::load(path);
  return is_compressed(f) ? int8_from_cluster_file(f, path) : load_int8(f, path);
}

}  // namespace deploy
