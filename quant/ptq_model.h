// Post-training quantization on the deployed model's own quantizer modules (layers/quantizer.h), so that
// ./ptq runs the same forward that a QAT model deploys to:
//
//     block:  y = ReLU(conv(Q_a(x), Q_w(W), b))           W, b: the block's rbr_reparam (3x3 conv, bias)
//     head:   logits = linear(Q_a(gap(y)), Q_w(W_fc), b_fc)
//
// Q_w is symmetric with s = max|w| / (2^(B-1) - 1) per layer or per output channel (quant/ptq_grid.h);
// Q_a is asymmetric per layer: codes [0, 2^B - 1], s and z from the range calibrated on the FP32 model's
// activations (quant/calibration.h). The first conv (stage0) and the last FC keep FP32 weights and inputs
// unless quantize_first_last. A quantized layer's bias is what integer hardware holds, int32 codes of step
// s_x s_w (layers::eval_bias).
// Quantizing replaces earlier quantizers, so one deploy model serves every bit width.
#pragma once
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "datasets/loader.h"
#include "models/layer_bits.h"
#include "models/repvgg.h"
#include "quant/calibration.h"
#include "quant/ptq_grid.h"

namespace quant {

using models::LayerBits;

struct QuantConfig {
  int weight_bits = 8, act_bits = 8;
  Granularity granularity = Granularity::layer;
  CalibMethod calib = CalibMethod::minmax;
  bool quantize_first_last = false;
  std::vector<LayerBits> layers;  // not empty: each layer's own widths (quant_layers() order), in place of the above
};

// The layers PTQ quantizes are the model's quant_layers(), in order: the blocks ("stage0", "stage1.0", ...),
// then the FC ("linear"). Layer i of n's widths: c.layers[i] where given, else c's for all but the first and last
// (FP32) unless quantize_first_last.
LayerBits bits_of(size_t layer, size_t n, const QuantConfig& c);

// Each layer's input, observed on the FP32 deploy model over up to `batches` batches of `loader`.
struct Calibration {
  std::vector<ActObserver> observers;  // one per layer
  int batches = 0;
  size_t images = 0;
};
Calibration calibrate(models::Model& deployed, data::Loader& loader, int batches, CalibMethod method,
                      engine::Device device);

// What each weight of a layer multiplies on average: the mean, over the batches' images and the layer's
// output positions, of the quantized input Q_a(x) that weight [o, c, kh, kw] reads, the padding reading 0
// (a block: [C, k, k] for its k x k, padding-(k − 1) / 2 conv at its stride; the FC: [C]), in double over up to
// `batches` batches of `loader`, on a model whose activation quantizers are attached (a QAT model in deploy
// form): the E[x] of the ClusterQAT layers' bias correction (deploy/int8_model.h). Keyed by layer name
// (RepVGG::quant_layers); a layer without an input quantizer has none.
std::map<std::string, std::vector<float>> input_means(models::Model& deployed, data::Loader& loader, int batches,
                                                      engine::Device device);

// Up to `batches` batches of `loader` from its epoch 0 through m, in eval mode, recording no gradient (the
// quantizers' observers see them). -> the batches and images run.
std::pair<int, size_t> forward_batches(models::Model& m, data::Loader& loader, int batches, engine::Device device);

// Gives each layer `c` quantizes its input and weight quantizers, the others none (FP32). Returns each
// layer's activation range ([0, 0] for an FP32 layer).
std::vector<Range> attach_quantizers(models::Model& deployed, const QuantConfig& c, const Calibration& cal);
void remove_quantizers(models::Model& model);
// A QAT model's weight width per layer (stage0 ... the FC; 0: FP32), as deploy::model_bytes takes them.
std::vector<int> layer_widths(const models::Model& model);  // FP32: forward is the deploy model's again

}  // namespace quant
