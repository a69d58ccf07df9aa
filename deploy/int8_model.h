// The quantized deploy model as a file: what `./ptq --export FILE` writes from a model with its quantizers
// attached (./ptq's calibrated ones, or a QAT run's learned ones: quant/deploy_export.h) and `./infer` runs
// with integer kernels (deploy/integer_model.h).
// The layout is docs/int8.md's. One layer per deploy conv ("stage0", "stage1.0", ... | "conv1", "layer1.0.conv1", ...)
// and the FC ("linear" | "fc"):
//
//   quantized:  y = s_x s_w[o] (Σ (q_x − z_x) q_w + q_b[o])          then ReLU (blocks) — the same function as
//               ./ptq's fake-quantized ReLU(conv(Q_a(x), Q_w(W), b)) but for the bias, rounded to q_b
//               q_x = clamp(round(x / s_x) + z_x, 0, 2^A − 1)         u8 codes of the layer's input
//               q_w ∈ [−(2^(B−1) − 1), 2^(B−1) − 1]                  s8 codes, s_w per layer [1] or channel [O]
//               B and A the layer's own (--layer-bits): a block writes the codes of the next one's range
//               q_b = round(b / (s_x s_w[o]))                         s32
//   FP32:       the deploy conv's (or FC's) float weight and bias as they are
//
// A signed input quantizer (QAT's image input, codes [−2^(A−1), 2^(A−1) − 1], z = 0) is written as the same
// function on unsigned codes: q + 2^(A−1), z_x = 2^(A−1).
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "engine/safetensors.h"
#include "models/arch.h"
#include "models/layer_bits.h"

namespace deploy {

// A layer: its spec (models/arch.h: name, shape, k x k with padding (k − 1) / 2, ReLU, source, residual, max
// pool; the FC a 1x1 conv of [N, I, 1, 1], weight [O, I], no ReLU) and its values.
struct Int8Layer : models::LayerSpec {
  bool quantized = false;
  models::LayerBits widths;   // quantized: its weights' bits B and its input's A, each 2..8; FP32: {0, 0}
  std::vector<float> weight, bias;      // FP32 layer: [O, I/g, k, k] (the FC [O, I]), [O]
  std::vector<int8_t> weight_codes;     // quantized layer: q_w, the shape of `weight`
  std::vector<float> weight_scale;      // s_w, [1] or [O]
  std::vector<int32_t> bias_codes;      // q_b [O]
  float input_scale = 1;                // s_x
  int input_zero_point = 0;             // z_x
  float w_scale(int o) const { return weight_scale.size() == 1 ? weight_scale[0] : weight_scale[o]; }
  std::vector<int64_t> weight_shape() const;
};

struct Int8Model {
  models::ArchConfig arch;
  std::string method;                   // "ptq-minmax", ..., or the QAT method ("qat-repq-bn", ...)
  std::string granularity;              // "layer" | "channel"
  std::map<std::string, std::string> metadata;  // all of the file's (dataset, image_size, source, ...)
  std::vector<Int8Layer> layers;        // the blocks in order, then the FC
};

// The layers of an arch, without their values: models::layer_specs, the FC last.
std::vector<Int8Layer> int8_layers(const models::ArchConfig& arch);

// A quantized layer's input side: s_x, and the zero point of codes [q_min, q_max] moved onto the unsigned
// codes [0, q_max − q_min] (a signed range, z = 0, gets z_x = −q_min: the same function).
void set_input(Int8Layer& l, float s_x, int zero_point, int q_min);
// w [O, ...] as s8 codes in [q_min, q_max] on the grid of l.weight_scale (per layer or per output channel).
void set_weight_codes(Int8Layer& l, const std::vector<float>& w, int q_min, int q_max);
// A ClusterQAT layer (its input set): `entries`, each weight its codebook entry, on the s8 grid of its output
// channel (cluster_weight_scales below), and `bias`, corrected for the grid's mean error where `mean` is given
// (cluster_bias_correction below), on the accumulator's grid as a uniform layer's.
void set_cluster_codes(Int8Layer& l, const std::vector<float>& entries, std::vector<float> bias,
                       const std::vector<float>* mean);

void save_int8(const std::string& path, const Int8Model& m);
// Reads and validates: format and version, the arch, every tensor's presence, dtype and shape, codes inside
// their bit range, scales finite and > 0, zero points inside the code range (0 after a ReLU). Every error is
// "file PATH: tensor NAME ...". No tensor may be left over.
Int8Model load_int8(const std::string& path);
Int8Model load_int8(const st::File& f, const std::string& path);  // f read from path

int64_t weight_bytes(const Int8Model& m);
// The quantized layers' widths for a reader: "W4/A8" when they share one, else each with its count in order of
// first use, e.g. "W8/A8 x2, W4/A8 x20".
std::string width_summary(const Int8Model& m);

// A ClusterQAT layer's weights (codebook entries: 2^b arbitrary floats, on no uniform grid) in s8: one scale
// per output channel, s_w[o] = max |w[o, ...]| / 127, each weight rounded to round(w / s_w[o]) (half to even),
// |s_w q − w| ≤ s_w / 2: exact only for entries that are integer multiples of s_w[o] (the channel's largest
// always is). Per channel, not one grid per codebook: a merged RepVGG kernel holds its identity and 1x1
// branches in the center tap, tens of times the other taps, and that outlier sets the grid (docs/int8.md).
// w [O, ...] -> [O].
std::vector<float> cluster_weight_scales(const std::vector<float>& w, int out);

// Every weight that holds one codebook entry carries the same rounding error, so over a post-ReLU input the
// errors add up instead of averaging out. Their mean, per output channel,
//     δ[o] = E[Σ (ŵ − w) x] = Σ_{c,t} (s_w[o] q_w[o,c,t] − w[o,c,t]) · E[x_{c,t}]
// is what the bias loses: b' = b − δ. The bias correction of Nagel et al. 2019 ("Data-Free Quantization
// Through Weight Equalization and Bias Correction"), with E[x] measured on training images (input_means:
// per input channel c and tap t, the padding included) instead of estimated from BN statistics. l: its
// codes and scales set; w: the weights they round; mean: E[x_{c,t}], [l.in, k, k] (the FC [l.in]). -> [O].
std::vector<float> cluster_bias_correction(const Int8Layer& l, const std::vector<float>& w, const std::vector<float>& mean);

}  // namespace deploy
