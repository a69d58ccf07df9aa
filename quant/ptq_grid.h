// The grids of post-training quantization, as the OABN paper's Sec. 4.1 uses them: weights symmetric,
// activations asymmetric (affine), both with B-bit integer codes. PTQ (quant/ptq_model.h) puts the model's
// quantizer modules (layers/quantizer.h) on these grids; the scalar functions below are its reference, each
// the one fake quantizer of engine/scalar_math.h with this scheme's codes.
//
// Rounding is round half to even everywhere (std::nearbyint in the default rounding mode, as torch.round
// and engine::round_ste): 0.5 -> 0, 1.5 -> 2, 2.5 -> 2, -2.5 -> -2.
//
// Symmetric codes use the restricted range q ∈ [-(2^(B-1) - 1), 2^(B-1) - 1] ([-127, 127] at 8 bits), as
// most PTQ papers and TensorRT do: it is symmetric about 0, so w and -w get opposite codes and ±max|w| both
// map onto the grid; the code -2^(B-1) is never produced.
//
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "engine/tensor.h"

namespace quant {

using engine::Tensor;

// --- symmetric (weights) -----------------------------------------------------------------------------
int symmetric_qmax(int bits);                              // 2^(B-1) - 1
// s = max|w| / (2^(B-1) - 1)   (1 when max|w| is 0: every code is then 0 anyway)
float symmetric_scale(float max_abs, int bits);
// q = clamp(round(w / s), -(2^(B-1) - 1), 2^(B-1) - 1)
int quantize_symmetric(float w, float s, int bits);
// ŵ = q · s
float fake_quant_symmetric(float w, float s, int bits);

// --- asymmetric (activations) ------------------------------------------------------------------------
struct AffineQuant {
  float scale = 1.0f;  // s
  int zero_point = 0;  // z, the code of 0.0
  int bits = 8;
};
int asymmetric_qmax(int bits);  // 2^B - 1
// The range [lo, hi] is first widened to contain 0 (so that 0.0, e.g. the conv's zero padding and ReLU's
// zeros, is exact), then
//     s = (hi - lo) / (2^B - 1),   z = clamp(round(-lo / s), 0, 2^B - 1)      (s = 1, z = 0 when hi = lo = 0)
AffineQuant asymmetric_params(float lo, float hi, int bits);
// q = clamp(round(x / s) + z, 0, 2^B - 1)
int quantize_asymmetric(float x, const AffineQuant& p);
// x̂ = (q - z) · s     (x = 0 gives q = z, hence x̂ = 0 exactly)
float fake_quant_asymmetric(float x, const AffineQuant& p);

// --- tensors -----------------------------------------------------------------------------------------
enum class Granularity { layer, channel };  // one scale per tensor, or per output channel (dim 0)
Granularity parse_granularity(const std::string& s);  // "layer" | "channel"; throws otherwise
const char* granularity_name(Granularity g);

// w [O, ...] -> the steps s = max|w| / (2^(B-1) - 1) of the whole tensor (layer: one) or of each w[o]
// (channel: O).
std::vector<float> weight_scales(const Tensor& w, int bits, Granularity g);

}  // namespace quant
