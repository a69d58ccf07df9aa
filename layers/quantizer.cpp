#include "layers/quantizer.h"

#include <algorithm>
#include <cmath>

#include "engine/ops.h"
#include "engine/scalar_math.h"
#include "engine/safetensors.h"

namespace layers {

using namespace engine;

StepInit parse_step_init(const std::string& s) {
  if (s == "min-error") return StepInit::min_error;
  if (s == "lsq") return StepInit::lsq;
  fail("step initialization '" + st::cut(s) + "' is not one of min-error, lsq");
}

const char* step_init_name(StepInit s) { return s == StepInit::min_error ? "min-error" : "lsq"; }

// Weights need 2 bits for a nonzero symmetric code; activations have codes {0, 1} (or {-1, 0}) at 1 bit
// (ClusterQAT's --bits 1 quantizes them so).
static int check_bits(int bits, Codes codes) {
  const int least = codes == Codes::weight ? 2 : 1;
  ENGINE_CHECK(bits >= least && bits <= 16, "bit width " + std::to_string(bits) + " is outside " + std::to_string(least) + "..16");
  return bits;
}

static int code_min(int bits, Codes c) {
  return c == Codes::weight ? -((1 << (bits - 1)) - 1) : c == Codes::signed_act ? -(1 << (bits - 1)) : 0;
}
static int code_max(int bits, Codes c) { return c == Codes::unsigned_act ? (1 << bits) - 1 : (1 << (bits - 1)) - 1; }

Quantizer::Quantizer(int bits, Codes codes, int64_t channels, StepInit init)
    : bits(check_bits(bits, codes)), codes(codes), q_min(code_min(bits, codes)), q_max(code_max(bits, codes)), init(init) {
  ENGINE_CHECK(channels >= 1 && (channels == 1 || codes == Codes::weight), "per-channel steps are for weights");
  step = register_parameter("step", Tensor::full(Shape{channels}, 1.0f), ParamKind::step);
  init_state = register_buffer("init_state", Tensor::zeros(Shape{1}));
}

bool Quantizer::initialized() const {
  if (!ready_) ready_ = init_state.to_vector()[0] != 0.0f;  // read once set: a checkpoint may have set it
  return ready_;
}

float fake_quant(float x, float s, int z, int q_min, int q_max) {
  return engine::fake_quant_value(x, s, (float)z, (float)q_min, (float)q_max);
}

float min_error_step(const float* v, int64_t n, int q_min, int q_max) {
  float max_abs = 0;
  for (int64_t i = 0; i < n; i++) max_abs = std::max(max_abs, std::fabs(v[i]));
  if (!(max_abs > 0) || !std::isfinite(max_abs)) return 1.0f;
  const int64_t stride = std::max<int64_t>(1, n / 65536);
  const float top = (float)std::max(-q_min, q_max);
  float best = max_abs / top;
  double best_err = INFINITY;
  for (int k = 1; k <= 100; k++) {
    const float s = max_abs * (float)k / 100.0f / top;
    double err = 0;
    for (int64_t i = 0; i < n; i += stride) {
      const double d = (double)v[i] - fake_quant(v[i], s, 0, q_min, q_max);
      err += d * d;
    }
    if (err < best_err) best_err = err, best = s;
  }
  return best;
}

// LSQ Sec. 2.1: s = 2 · mean|x| / sqrt(Q_P)
static float lsq_step(const float* v, int64_t n, int q_max) {
  double sum = 0;
  for (int64_t i = 0; i < n; i++) sum += std::fabs(v[i]);
  const float s = (float)(2.0 * sum / (double)std::max<int64_t>(n, 1) / std::sqrt((double)q_max));
  return s > 0 && std::isfinite(s) ? s : 1.0f;
}

void Quantizer::init_from(const Tensor& x) {
  const std::vector<float> v = x.to_vector();
  const int64_t rows = step.numel(), per_row = (int64_t)v.size() / rows;
  ENGINE_CHECK(per_row * rows == (int64_t)v.size() && per_row > 0,
               x.str() + " does not split into " + std::to_string(rows) + " channels");
  std::vector<float> steps(rows);
  for (int64_t r = 0; r < rows; r++) {
    const float* p = v.data() + r * per_row;
    steps[r] = init == StepInit::min_error ? min_error_step(p, per_row, q_min, q_max) : lsq_step(p, per_row, q_max);
  }
  set_step(steps);
}

void Quantizer::set_step(const std::vector<float>& steps) {
  ENGINE_CHECK((int64_t)steps.size() == step.numel(), std::to_string(steps.size()) + " steps for " + step.str());
  for (float s : steps) ENGINE_CHECK(s > 0 && std::isfinite(s), "a step must be positive and finite, got " + std::to_string(s));
  step.copy_(Tensor::from_vector(steps, step.shape()).to(step.device()));
  init_state.fill_(1.0f);
  ready_ = true;
}

Tensor lsq_reference(const Tensor& x, const Tensor& step, int zero_point, int q_min, int q_max, float grad_scale) {
  const Tensor scaled = mul_scalar(step, grad_scale);
  Tensor s = add(scaled, detach(sub(step, scaled)));  // s·g + sg(s − s·g)
  if (step.numel() > 1) {  // one step per row: [R] -> [R, 1, ...]
    Shape shape = x.shape();
    for (int i = 1; i < shape.n; i++) shape.d[i] = 1;
    s = reshape(s, shape);
  }
  const Tensor q = clamp(add_scalar(round_ste(div(x, s)), (float)zero_point), (float)q_min, (float)q_max);
  return mul(add_scalar(q, (float)-zero_point), s);
}

Tensor Quantizer::forward(const Tensor& x) {
  if (observer) observer(x);
  if (!fake_quant) return x;
  if (!initialized()) {
    ENGINE_CHECK(training(), "quantizer used in eval mode before its step was set (train a batch or load a checkpoint)");
    init_from(x);
  }
  const int64_t c = step.numel();
  ENGINE_CHECK(c == 1 || (x.dim() >= 2 && x.size(0) == c), "per-channel step " + step.str() + " for " + x.str());
  const int64_t n = x.numel() / c;  // values per step
  return fake_quantize(x, step, zero_point, q_min, q_max, 1.0f / std::sqrt((float)n * (float)q_max));  // LSQ Sec. 2.2
}

BiasCodes bias_codes(const Tensor& b, const Quantizer& act, const Quantizer& weight, const std::string& name) {
  const std::vector<float> s_x = act.step.to_vector();
  ENGINE_CHECK(s_x.size() == 1, name + ": the input quantizer has " + std::to_string(s_x.size()) + " steps, not one");
  return engine::bias_codes(b.to_vector(), s_x[0], weight.step.to_vector(), name);
}


Tensor eval_bias(const Tensor& b, const Quantizer* act, const Quantizer* weight, bool training, const std::string& name) {
  if (training || !act || !weight || !act->fake_quant || !weight->fake_quant) return b;
  const BiasCodes c = bias_codes(b, *act, *weight, name);
  const std::vector<float> v = b.to_vector();
  std::vector<float> delta(v.size());
  for (size_t o = 0; o < v.size(); o++) delta[o] = (float)c.codes[o] * c.steps[o] - v[o];  // b̂ − b
  return add(b, Tensor::from_vector(delta, b.shape()).to(b.device()));
}

}  // namespace layers
