#include "quant/ptq_grid.h"

#include <algorithm>
#include <cmath>

#include "engine/scalar_math.h"

namespace quant {

static void check_bits(int bits) {
  ENGINE_CHECK(bits >= 2 && bits <= 16, "bit width " + std::to_string(bits) + " is outside 2..16");
}

int symmetric_qmax(int bits) {
  check_bits(bits);
  return (1 << (bits - 1)) - 1;
}

float symmetric_scale(float max_abs, int bits) {
  const int qmax = symmetric_qmax(bits);
  return max_abs > 0 ? max_abs / (float)qmax : 1.0f;
}

// Both schemes are the one fake quantizer of engine/scalar_math.h (fake_quant_code, fake_quant_value), with
// their code ranges and zero points.
int quantize_symmetric(float w, float s, int bits) {
  const float qmax = (float)symmetric_qmax(bits);
  return (int)engine::fake_quant_code(w, s, 0.0f, -qmax, qmax);
}

float fake_quant_symmetric(float w, float s, int bits) {
  const float qmax = (float)symmetric_qmax(bits);
  return engine::fake_quant_value(w, s, 0.0f, -qmax, qmax);
}

int asymmetric_qmax(int bits) {
  check_bits(bits);
  return (1 << bits) - 1;
}

AffineQuant asymmetric_params(float lo, float hi, int bits) {
  ENGINE_CHECK(lo <= hi && std::isfinite(lo) && std::isfinite(hi),
               "bad activation range [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
  const int qmax = asymmetric_qmax(bits);
  lo = std::min(lo, 0.0f);
  hi = std::max(hi, 0.0f);
  AffineQuant p;
  p.bits = bits;
  if (hi == lo) return p;  // both 0: s = 1, z = 0
  p.scale = (hi - lo) / (float)qmax;
  p.zero_point = (int)std::clamp(std::nearbyint(-lo / p.scale), 0.0f, (float)qmax);
  return p;
}

int quantize_asymmetric(float x, const AffineQuant& p) {
  return (int)engine::fake_quant_code(x, p.scale, (float)p.zero_point, 0.0f, (float)asymmetric_qmax(p.bits));
}

float fake_quant_asymmetric(float x, const AffineQuant& p) {
  return engine::fake_quant_value(x, p.scale, (float)p.zero_point, 0.0f, (float)asymmetric_qmax(p.bits));
}

Granularity parse_granularity(const std::string& s) {
  if (s == "layer") return Granularity::layer;
  if (s == "channel") return Granularity::channel;
  engine::fail("granularity '" + s + "' is not one of layer, channel");
}

const char* granularity_name(Granularity g) { return g == Granularity::layer ? "layer" : "channel"; }

std::vector<float> weight_scales(const Tensor& w, int bits, Granularity g) {
  ENGINE_CHECK(w.dtype() == engine::DType::f32 && w.dim() >= 1, "weight " + w.str());
  const std::vector<float> v = w.to_vector();
  const int64_t rows = g == Granularity::channel ? w.size(0) : 1, per_row = (int64_t)v.size() / std::max<int64_t>(rows, 1);
  std::vector<float> scales(rows);
  for (int64_t r = 0; r < rows; r++) {
    float max_abs = 0;
    for (int64_t i = r * per_row; i < (r + 1) * per_row; i++) max_abs = std::max(max_abs, std::fabs(v[i]));
    scales[r] = symmetric_scale(max_abs, bits);
  }
  return scales;
}

}  // namespace quant
