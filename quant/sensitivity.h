// ./ptq --sensitivity: which quantized layers hurt, fast. One calibration, then per layer of
// RepVGG::quant_layers() and bit width two cheap measures on a few hundred training images (no labels, no
// evaluation pass):
//   alone    the layer quantized, every other FP32
//   kept     every layer quantized but this one (the benefit of keeping it in float)
// each the mean KL divergence of the quantized model's logits from the FP32 model's (logit_kl). How well the
// proxy ranks the layers like their full validation top-1 does is measured by --sensitivity-check
// (spearman below), and reported in docs/sensitivity.md.
#pragma once
#include <string>
#include <vector>

#include "engine/tensor.h"
#include "models/repvgg.h"
#include "quant/ptq_model.h"

namespace quant {

using engine::Tensor;

// The proxy: (1/N) Σ_i KL(softmax(reference_i) ‖ softmax(logits_i)) over the rows of two [N, K] logit sets,
// in double.
double logit_kl(const std::vector<float>& reference, const std::vector<float>& logits, int64_t classes);

// Spearman's rank correlation of two equally long series (ties get their mean rank); NaN for fewer than
// two values or a constant series.
double spearman(const std::vector<double>& a, const std::vector<double>& b);

struct LayerSensitivity {
  std::string name;          // "stage1.0", ..., "linear"
  bool identity = false;     // a block with an identity branch (QuantLayer::identity): OABN's outliers live there
  double alone = 0, kept = 0;  // logit KL, above
  double alone_top1 = -1;    // --sensitivity-check: validation top-1 with this layer alone quantized (-1: not run)
};

// Every layer of `deployed` (deploy form, no quantizers) at c's bits and calibration `cal`: the two measures
// on `images` (batches [n, 3, H, W]) against `reference`, the FP32 model's logits of them. Leaves the model FP32.
std::vector<LayerSensitivity> layer_sensitivity(models::Model& deployed, const Calibration& cal, QuantConfig c,
                                                const std::vector<Tensor>& images, const std::vector<float>& reference);

// The logits of `model` on the batches `images`, in order, without gradients.
std::vector<float> logits_of(models::Model& model, const std::vector<Tensor>& images);


}  // namespace quant
