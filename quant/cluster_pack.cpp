#include "quant/cluster_pack.h"

#include <cmath>

#include "layers/checkpoint.h"

namespace quant {

using engine::fail;

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

static const char* const kFormat = "cluster-codes";

// The codebook of a coded weight: "stage1.0.rbr_reparam" -> "stage1.0.weight_quant.codebook", "linear" ->
// "linear_weight_quant.codebook".
static std::string codebook_name(const std::string& layer) {
  if (layer == "linear") return "linear_weight_quant.codebook";
  const std::string suffix = ".rbr_reparam";
  ENGINE_CHECK(layer.size() > suffix.size() && layer.compare(layer.size() - suffix.size(), suffix.size(), suffix) == 0,
               "'" + layer + "' is not a block's rbr_reparam nor the FC");
  return layer.substr(0, layer.size() - suffix.size()) + ".weight_quant.codebook";
}

static const char* const kMeanSuffix = ".input_mean";

st::File compress_cluster(models::RepVGG& m, const std::map<std::string, std::string>& metadata,
                          const std::map<std::string, std::vector<float>>& input_means) {
  ENGINE_CHECK(m.qat() && m.qat()->traits().cluster, "compress_cluster: not a ClusterQAT model");
  for (auto& b : m.blocks()) ENGINE_CHECK(b->deployed(), "compress_cluster: the model is not in deploy form");
  std::map<std::string, layers::ClusterQuantizer*> coded;  // weight name -> its quantizer
  for (auto& [name, q] : m.cluster_quantizers()) coded[name == "linear" ? "linear.weight" : name + ".rbr_reparam.weight"] = q;
  st::File f;
  f.metadata = metadata;
  f.metadata.merge(models::qat_metadata(*m.qat()));
  f.metadata["form"] = "deploy";
  f.metadata["format"] = kFormat;
  for (auto& [name, q] : m.cluster_quantizers())
    if (auto it = input_means.find(name); it != input_means.end())
      f.tensors[name + kMeanSuffix] = st::Entry::of<float>({(int64_t)it->second.size()}, it->second.data());
  for (auto& t : m.state_dict()) {
    auto it = coded.find(t.name);
    if (it == coded.end()) {
      f.tensors[t.name] = layers::to_entry(t.tensor);
      continue;
    }
    const std::string layer = t.name.substr(0, t.name.size() - std::string(".weight").size());
    const std::vector<uint8_t> packed = pack_codes(it->second->codes(t.tensor), it->second->bits);
    const std::vector<int64_t> shape = t.tensor.shape().vec();
    f.tensors[layer + ".weight_codes"] = st::Entry::of<uint8_t>({(int64_t)packed.size()}, packed.data());
    f.tensors[layer + ".weight_shape"] = st::Entry::of<int64_t>({(int64_t)shape.size()}, shape.data());
  }
  return f;
}

bool is_compressed(const st::File& f) {
  auto it = f.metadata.find("format");
  return it != f.metadata.end() && it->second == kFormat;
}

static bool ends_with(const std::string& s, const std::string& t) {
  return s.size() >= t.size() && s.compare(s.size() - t.size(), t.size(), t) == 0;
}

std::map<std::string, std::vector<float>> cluster_input_means(const st::File& f, const std::string& path) {
  std::map<std::string, std::vector<float>> means;
  for (auto& [name, e] : f.tensors) {
    if (!ends_with(name, kMeanSuffix)) continue;
    if (e.dtype != st::DType::F32 || e.shape.size() != 1) fail(path + ": tensor '" + name + "' is not F32 [channels × taps]");
    std::vector<float> v = e.to_vector<float>();
    for (float x : v)
      if (!std::isfinite(x)) fail(path + ": tensor '" + name + "' holds a non-finite mean");
    means[name.substr(0, name.size() - std::string(kMeanSuffix).size())] = std::move(v);
  }
  return means;
}

st::File decompress_cluster(const st::File& f, const std::string& path) {
  const auto qat = models::qat_from_metadata(f.metadata, path);
  if (!qat || !qat->traits().cluster) fail(path + ": a compressed file without metadata qat=cluster");
  const size_t entries = size_t(1) << qat->bits;
  st::File out;
  out.metadata = f.metadata;
  for (auto& [name, e] : f.tensors) {
    if (ends_with(name, ".weight_shape") || ends_with(name, kMeanSuffix)) continue;
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
    if ((size_t)cb_it->second.numel() != entries)
      fail(path + ": tensor '" + cb_name + "' has " + std::to_string(cb_it->second.numel()) + " entries, expected 2^" +
           std::to_string(qat->bits) + " = " + std::to_string(entries) + " (metadata bits)");
    if (e.dtype != st::DType::U8 || e.shape.size() != 1) fail(path + ": tensor '" + name + "' is not U8 [bytes]");
    std::vector<uint8_t> codes;
    try {
      codes = unpack_codes(e.bytes, qat->bits, (size_t)n);
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

ModelBytes model_bytes(const models::ArchConfig& arch, int bits, bool quantize_first_last) {
  std::vector<std::pair<int64_t, int64_t>> layers;  // (weights, biases), stage0 ... the FC
  int last = 0;
  for (auto& stage : models::block_specs(arch))
    for (const models::BlockSpec& b : stage) {
      layers.push_back({(int64_t)b.out * (b.in / b.groups) * 9, b.out});
      last = b.out;
    }
  layers.push_back({(int64_t)last * arch.num_classes, arch.num_classes});
  ModelBytes s;
  for (size_t i = 0; i < layers.size(); i++) {
    const auto [n, o] = layers[i];
    const int64_t fp = 4 * (n + o);
    s.fp32 += fp;
    if (!quantize_first_last && (i == 0 || i + 1 == layers.size())) {
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

}  // namespace quant
