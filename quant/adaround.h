// AdaRound (Nagel et al., ICML 2020, "Up or Down? Adaptive Rounding for Post-Training Quantization"):
// PTQ that chooses, for each weight, whether it rounds up or down on the grid ./ptq chose, by minimizing
// the layer's output reconstruction error on calibration images, one layer after the other.
//
//     W̃ = s · clip(⌊W / s⌋ + h(V), n, p)                                              (Eq. 22)
//     h(V) = clip(σ(V) (ζ − γ) + γ, 0, 1),   ζ = 1.1, γ = −0.1  (the rectified sigmoid)   (Eq. 23)
//     f_reg(V) = Σ_ij 1 − |2 h(V_ij) − 1|^β                                             (Eq. 24)
//     argmin_V ‖f_a(W x) − f_a(W̃ x̂)‖²_F + λ f_reg(V)                                    (Eq. 25)
//
// x is the layer's input in the FP32 model, x̂ in the model whose earlier layers are quantized already
// (their weights AdaRounded, their inputs quantized), and quantized here by the layer's own input quantizer;
// f_a is the block's ReLU (none for the FC). Eq. 25's target f_a(W x) asks the rounding to undo the earlier
// layers' errors too (the paper's "asymmetric reconstruction", measured there with float activations). With
// quantized activations that hurt here: repvgg-cifar W6/A6 fell from 70.70% (nearest) to 24.01% while every
// layer's own error fell (docs/adaround.md). The default target is therefore f_a(W x̂), the FP32 weights on
// the same input (the paper's layer-wise objective before Eq. 25, with the activation function and the input
// quantizer), which reached 77.70% there; `target = fp32_input` is Eq. 25.
// s, n and p are the layer's weight quantizer's: AdaRound changes the rounding only, so it is compared
// with ./ptq's nearest rounding on the same grid. V starts where h(V) = W/s − ⌊W/s⌋ (W̃ = W); β anneals
// linearly from 20 to 2 after a warm-up of 20% of the iterations without the regularizer; Adam (lr 1e-3) on
// batches of 32 of the kept calibration images; λ = 0.01. The Frobenius norm is summed over the output
// channels and averaged over the images and positions, as in BRECQ's and AIMET's code, whose λ it matches.
// At the end each weight takes ⌊W/s⌋ + [h(V) ≥ 1/2] (V ≥ 0).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "datasets/loader.h"
#include "engine/tensor.h"
#include "models/repvgg.h"

namespace quant {

using engine::Tensor;

enum class AdaRoundTarget { quantized_input, fp32_input };  // f_a(W x̂), or Eq. 25's f_a(W x)
AdaRoundTarget parse_adaround_target(const std::string& s);  // "quantized" | "fp32"; throws otherwise
const char* adaround_target_name(AdaRoundTarget t);

struct AdaRoundOptions {
  AdaRoundTarget target = AdaRoundTarget::quantized_input;
  int iters = 2000;        // per layer
  int images = 1024;       // calibration images kept for the reconstruction
  int batch = 32;          // images a step
  float lambda = 0.01f;    // λ of Eq. 25
  float beta_start = 20.f, beta_end = 2.f;
  float warmup = 0.2f;     // the first iterations without f_reg, as a fraction
  float lr = 1e-3f;        // Adam's
  uint64_t seed = 0;
};

constexpr float kZeta = 1.1f, kGamma = -0.1f;

Tensor rectified_sigmoid(const Tensor& v);                   // Eq. 23: h(V), V's shape
Tensor rounding_regularizer(const Tensor& v, float beta);    // Eq. 24: f_reg(V), a scalar
// Eq. 22: W̃ from w_floor = ⌊W / s⌋ [O, ...] and V (its shape), s [O, 1, ...] or [1] broadcast.
Tensor soft_quantized_weight(const Tensor& w_floor, const Tensor& v, const Tensor& s, int q_min, int q_max);
// The V where h(V) = r, r = W/s − ⌊W/s⌋ ∈ [0, 1): σ(V) = (r − γ) / (ζ − γ).
float initial_v(float r);
// β at iteration t of T: beta_start during the warm-up and at its end, then linearly to beta_end at T.
float annealed_beta(int t, const AdaRoundOptions& o);

struct AdaRoundLayer {
  std::string name;
  double nearest_error = 0, adaround_error = 0;  // Eq. 25's first term on the kept images, at the end
  double flipped = 0;                            // the fraction of weights not rounded to nearest
  double seconds = 0;
};

// On `model`, in deploy form with ./ptq's quantizers attached (quant/ptq_model.h): each layer with a weight
// quantizer, in order, gets the weight W̃ of its learned rounding (on its quantizer's grid, so that the
// quantizer reproduces its codes). The inputs x and x̂ of each layer come from the first o.images images of
// an epoch of `loader` (eval transform). Returns a line per layer.
std::vector<AdaRoundLayer> adaround(models::Model& model, data::Loader& loader, const AdaRoundOptions& o,
                                    engine::Device device);

}  // namespace quant
