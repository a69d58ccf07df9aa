// Per-element arithmetic written once for the CPU loops (engine/cpu/) and the CUDA kernels (engine/cuda/):
// ENGINE_HD is `__host__ __device__` under nvcc and nothing under g++, so the CPU tests cover the math that
// the GPU runs. Only plain float arithmetic and C math functions that both sides have (sqrtf, nearbyintf, ...).
#pragma once
#include <math.h>

#include "engine/kernels.h"

#ifdef __CUDACC__
#define ENGINE_HD __host__ __device__ __forceinline__
#else
#define ENGINE_HD inline
#endif

namespace engine {

// v clamped to [lo, hi] with comparisons, so a NaN stays NaN as in PyTorch (fminf and fmaxf drop it, and
// they are library calls that keep the loops around them from vectorizing).
ENGINE_HD float clamp_nan(float v, float lo, float hi) { return v < lo ? lo : v > hi ? hi : v; }

// --- unary ops: y = op(x), and gx = d op(x)/dx * gy (y = op(x) for ops whose derivative uses it) ---------
template <UnaryOp op>
ENGINE_HD float unary_value(float x, float p0, float p1) {
  if constexpr (op == UnaryOp::relu) return x <= 0.f ? 0.f : x;  // NaN stays NaN, as in PyTorch
  else if constexpr (op == UnaryOp::square) return x * x;
  else if constexpr (op == UnaryOp::sqrt) return sqrtf(x);
  else if constexpr (op == UnaryOp::rsqrt) return 1.f / sqrtf(x);
  else if constexpr (op == UnaryOp::clamp) return clamp_nan(x, p0, p1);
  else if constexpr (op == UnaryOp::round) return nearbyintf(x);  // half to even (default rounding mode)
  else if constexpr (op == UnaryOp::add_scalar) return x + p0;
  else if constexpr (op == UnaryOp::sigmoid) return 1.f / (1.f + expf(-x));
  else if constexpr (op == UnaryOp::abs) return fabsf(x);
  else if constexpr (op == UnaryOp::pow) return powf(x, p0);
  else return x * p0;  // mul_scalar
}

template <UnaryOp op>
ENGINE_HD float unary_grad(float x, float y, float gy, float p0, float p1) {
  if constexpr (op == UnaryOp::relu) return x <= 0.f ? 0.f : gy;  // NaN passes gy, as PyTorch's threshold_backward
  else if constexpr (op == UnaryOp::square) return 2.f * x * gy;
  else if constexpr (op == UnaryOp::sqrt) return gy * 0.5f / y;
  else if constexpr (op == UnaryOp::rsqrt) return -0.5f * y * y * y * gy;  // d x^-1/2 = -1/2 y^3
  else if constexpr (op == UnaryOp::clamp) return x >= p0 && x <= p1 ? gy : 0.f;
  else if constexpr (op == UnaryOp::round || op == UnaryOp::add_scalar) return gy;  // round: straight-through
  else if constexpr (op == UnaryOp::sigmoid) return gy * y * (1.f - y);
  else if constexpr (op == UnaryOp::abs) return x > 0.f ? gy : x < 0.f ? -gy : 0.f;  // 0 at 0, as torch.sign
  else if constexpr (op == UnaryOp::pow) return p0 == 0.f ? 0.f : gy * p0 * powf(x, p0 - 1.f);
  else return gy * p0;  // mul_scalar
}

// Calls f(std::integral_constant-like tag) with the op as a compile-time constant: one switch, then a
// loop or kernel specialised for the op.
template <UnaryOp op> struct UnaryTag { static constexpr UnaryOp value = op; };
template <class F>
inline void with_unary_op(UnaryOp op, F&& f) {
  switch (op) {
    case UnaryOp::relu: return f(UnaryTag<UnaryOp::relu>{});
    case UnaryOp::square: return f(UnaryTag<UnaryOp::square>{});
    case UnaryOp::sqrt: return f(UnaryTag<UnaryOp::sqrt>{});
    case UnaryOp::rsqrt: return f(UnaryTag<UnaryOp::rsqrt>{});
    case UnaryOp::clamp: return f(UnaryTag<UnaryOp::clamp>{});
    case UnaryOp::round: return f(UnaryTag<UnaryOp::round>{});
    case UnaryOp::add_scalar: return f(UnaryTag<UnaryOp::add_scalar>{});
    case UnaryOp::mul_scalar: return f(UnaryTag<UnaryOp::mul_scalar>{});
    case UnaryOp::sigmoid: return f(UnaryTag<UnaryOp::sigmoid>{});
    case UnaryOp::abs: return f(UnaryTag<UnaryOp::abs>{});
    case UnaryOp::pow: return f(UnaryTag<UnaryOp::pow>{});
  }
}

template <BinaryOp op>
ENGINE_HD float binary_value(float a, float b) {
  if constexpr (op == BinaryOp::add) return a + b;
  else if constexpr (op == BinaryOp::sub) return a - b;
  else if constexpr (op == BinaryOp::mul) return a * b;
  else return a / b;
}

// --- batch norm: x [N, C, H, W], each channel normalised over its M = N*H*W values -----------------------
// Batch statistics from the channel's sums of d = x - shift and d², shift = the channel's first value (so a
// large mean does not cancel in E[d²] - E[d]²): the mean and the biased variance.
ENGINE_HD void bn_batch_stats(double sum_d, double sum_d2, double m, float shift, float& mean, float& var) {
  const double mean_d = sum_d / m, v = sum_d2 / m - mean_d * mean_d;
  mean = (float)(shift + mean_d);
  var = (float)(v > 0.0 ? v : 0.0);
}
ENGINE_HD float bn_invstd(float var, float eps) { return (float)(1.0 / ::sqrt((double)var + eps)); }
// running = (1 - momentum) running + momentum batch; the running variance takes the unbiased batch variance.
ENGINE_HD float bn_running_update(float running, double batch, float momentum) {
  return (float)((1.0 - momentum) * running + momentum * batch);
}
ENGINE_HD float bn_running_var_update(float running, float var, double m, float momentum) {
  return bn_running_update(running, var * m / (m - 1), momentum);
}
// y = (x - mean) / sqrt(var + eps) * gamma + beta, with scale = gamma / sqrt(var + eps)
ENGINE_HD float bn_normalize(float x, float mean, float scale, float beta) { return (x - mean) * scale + beta; }
// Training-mode input gradient: gx = gamma invstd (gy - Σgy / M - x̂ Σgy·x̂ / M), x̂ = (x - mean) invstd,
// as k (gy - a - (x - mean) b) with k = gamma invstd, a = Σgy / M, b = Σgy·x̂ invstd / M.
ENGINE_HD float bn_train_grad_x(float gy, float x, float mean, float k, float a, float b) {
  return k * (gy - a - (x - mean) * b);
}

// --- softmax cross-entropy with label smoothing ε: target = (1 - ε) onehot + ε / K ------------------------
// A row's loss from z = logits - max: lse - (1 - ε) z[label] - ε / K Σ z, lse = log Σ exp z.
ENGINE_HD float ce_row_loss(double lse, float z_label, double sum_z, float smoothing, int64_t k) {
  const double eps = smoothing;
  return (float)(lse - (1 - eps) * z_label - eps / k * sum_z);
}
// d loss / d z_j = gscale (p_j - target_j)
ENGINE_HD float ce_grad(float p, bool is_label, float smoothing, int64_t k, float gscale) {
  float g = gscale * (p - smoothing / (float)k);
  return is_label ? g - gscale * (1.f - smoothing) : g;
}

// --- SGD (engine/optim.h), PyTorch's order of operations: d = g + wd p; with momentum (buf not null)
// buf = first ? d : momentum buf + d, d = nesterov ? d + momentum buf : buf; then p -= lr d.
ENGINE_HD void sgd_step(float& p, float g, float* buf, float lr, float momentum, float wd, bool nesterov,
                        bool first, bool positive) {
  float d = g + wd * p;
  if (buf) {
    const float b = first ? d : momentum * *buf + d;
    *buf = b;
    d = nesterov ? d + momentum * b : b;
  }
  p -= lr * d;
  if (positive) {  // the reflection p = |p|, at least float32's epsilon (a NaN p stays NaN)
    p = fabsf(p);
    if (p < 1.1920929e-7f) p = 1.1920929e-7f;
  }
}

// --- fake_quantize (ops.h): v = x / s, code q = clamp(round(v) + z, q_min, q_max), y = (q − z) s ---------
// A NaN x gives a NaN y (the clamp would turn it into a code). z, q_min and q_max are integers held in
// floats (exact), converted once by the caller: converted inside, they keep the OpenMP loops scalar.
// The code alone, clamp(round(x / s) + z, q_min, q_max): also what integer inference stores (quant/).
ENGINE_HD float fake_quant_code(float x, float s, float z, float q_min, float q_max) {
  return clamp_nan(nearbyintf(x / s) + z, q_min, q_max);
}

ENGINE_HD float fake_quant_value(float x, float s, float z, float q_min, float q_max) {
  return (fake_quant_code(x, s, z, q_min, q_max) - z) * s;
}

// gx = d y / d x · gy (1 inside the code range, 0 outside: LSQ Eq. 3 with the round straight-through);
// term = d y / d s · gy: round(v) − v inside, q − z outside.
ENGINE_HD void fake_quant_grad(float x, float s, float z, float q_min, float q_max, float gy, float& gx, float& term) {
  const float v = x / s, r = nearbyintf(v) + z;
  const bool inside = r >= q_min && r <= q_max;
  gx = inside ? gy : 0.f;
  term = gy * (inside ? nearbyintf(v) - v : clamp_nan(r, q_min, q_max) - z);
}

// --- max pooling (ops.h max_pool2d): windows of k inputs from o * s − p along each spatial dim -------------
ENGINE_HD int64_t pool_out_size(int64_t in, int k, int s, int p) { return (in + 2 * p - k) / s + 1; }  // in + 2p >= k
// Output o's window along one dim, the padding cut off: inputs [lo, hi).
struct PoolWindow {
  int64_t lo, hi;
};
ENGINE_HD PoolWindow pool_window(int64_t o, int64_t in, int k, int s, int p) {
  const int64_t start = o * s - p, end = start + k;
  return {start < 0 ? 0 : start, end < in ? end : in};
}
// Whether v takes the place of m, the window's max so far (from −inf, scanned in row-major order): it is
// larger, or NaN. The first largest value wins, and a NaN over any number (the last NaN over another), as
// in PyTorch's CPU kernel.
ENGINE_HD bool pool_takes(float v, float m) { return v > m || isnan(v); }

}  // namespace engine
