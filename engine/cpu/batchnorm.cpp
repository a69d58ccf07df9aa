// CPU kernels for batch norm. x [N, C, HW]: channel c's M = N * HW values are the N planes x[n, c, :], each
// HW contiguous floats. Work is split over the N * C planes; each plane's sums are kept (in double) and
// added up per channel in plane order, so results do not depend on the thread count. The per-channel and
// per-element math is in engine/scalar_math.h, shared with engine/cuda/batchnorm.cu.
#include <algorithm>
#include <vector>

#include "engine/cpu/channel_block.h"
#include "engine/kernels.h"
#include "engine/scalar_math.h"

namespace engine::cpu {

static bool parallel(const BnShape& s) { return s.n * s.c * s.hw > 32768; }

// Per-channel sums a[c], b[c] of the pair that plane_sums(plane p = n * C + c, a, b) computes for each plane.
template <class F>
static void channel_sums(const BnShape& s, std::vector<double>& a, std::vector<double>& b, F plane_sums) {
  const int64_t planes = s.n * s.c;
  std::vector<double> pa(planes), pb(planes);
#pragma omp parallel for schedule(static) if (parallel(s))
  for (int64_t p = 0; p < planes; p++) plane_sums(p, pa[p], pb[p]);
  a.assign(s.c, 0.0);
  b.assign(s.c, 0.0);
  for (int64_t n = 0; n < s.n; n++)
    for (int64_t c = 0; c < s.c; c++) {
      a[c] += pa[n * s.c + c];
      b[c] += pb[n * s.c + c];
    }
}

// y[n, c, i] = (x[n, c, i] - mean[c]) * scale[c] + beta[c]
static void normalize(const BnShape& s, const float* x, const float* mean, const float* scale, const float* beta,
                      float* y) {
#pragma omp parallel for schedule(static) if (parallel(s))
  for (int64_t p = 0; p < s.n * s.c; p++) {
    const int64_t c = p % s.c;
    const float mu = mean[c], k = scale[c], b = beta[c];
    const float* xp = x + p * s.hw;
    float* yp = y + p * s.hw;
#pragma omp simd
    for (int64_t i = 0; i < s.hw; i++) yp[i] = bn_normalize(xp[i], mu, k, b);
  }
}

// Sync-BN (ops.h set_batch_norm_sync): a and b [C] and the count m, added up over the processes.
static void sync_sums(BatchSumFn sum, std::vector<double>& a, std::vector<double>& b, double& m) {
  std::vector<double> all(a);
  all.insert(all.end(), b.begin(), b.end());
  all.push_back(m);
  sum(all.data(), all.size());
  std::copy(all.begin(), all.begin() + a.size(), a.begin());
  std::copy(all.begin() + a.size(), all.end() - 1, b.begin());
  m = all.back();
}

void bn_train_forward(const BnShape& s, const float* x, const float* gamma, const float* beta,
                      float* running_mean, float* running_var, float momentum, float eps, float* mean, float* var,
                      float* y) {
  const BatchSumFn sync = batch_norm_sync();
  double m = (double)(s.n * s.hw);
  // One pass: sums of d and d² with d = x - shift (see bn_batch_stats), shift x[0, c, 0]; sync-BN: the
  // running mean, the same on every process.
  auto shift_of = [&](int64_t c) -> float { return sync ? running_mean[c] : x[c * s.hw]; };
  std::vector<double> sum_d, sum_d2;
  channel_sums(s, sum_d, sum_d2, [&](int64_t p, double& a, double& b) {
    const float* xp = x + p * s.hw;
    const double shift = shift_of(p % s.c);
    double sa = 0, sb = 0;
#pragma omp simd reduction(+ : sa, sb)
    for (int64_t i = 0; i < s.hw; i++) {
      double d = xp[i] - shift;
      sa += d;
      sb += d * d;
    }
    a = sa;
    b = sb;
  });
  if (sync) sync_sums(sync, sum_d, sum_d2, m);
  std::vector<float> scale(s.c);
  for (int64_t c = 0; c < s.c; c++) {
    bn_batch_stats(sum_d[c], sum_d2[c], m, shift_of(c), mean[c], var[c]);
    running_mean[c] = bn_running_update(running_mean[c], mean[c], momentum);
    running_var[c] = bn_running_var_update(running_var[c], var[c], m, momentum);
    scale[c] = gamma[c] * bn_invstd(var[c], eps);
  }
  normalize(s, x, mean, scale.data(), beta, y);
}

void bn_eval_forward(const BnShape& s, const float* x, const float* gamma, const float* beta,
                     const float* running_mean, const float* running_var, float eps, float* y) {
  std::vector<float> scale(s.c);
  for (int64_t c = 0; c < s.c; c++) scale[c] = gamma[c] * bn_invstd(running_var[c], eps);
  normalize(s, x, running_mean, scale.data(), beta, y);
}

// Per channel: sum_gy[c] = Σ gy and sum_gy_xhat[c] = Σ gy xhat with xhat = (x - mean[c]) invstd[c].
static void grad_sums(const BnShape& s, const float* x, const float* mean, const float* istd, const float* gy,
                      std::vector<double>& sum_gy, std::vector<double>& sum_gy_xhat) {
  channel_sums(s, sum_gy, sum_gy_xhat, [&](int64_t p, double& a, double& b) {
    const float* xp = x + p * s.hw;
    const float* gp = gy + p * s.hw;
    const double mu = mean[p % s.c];
    double sa = 0, sb = 0;
#pragma omp simd reduction(+ : sa, sb)
    for (int64_t i = 0; i < s.hw; i++) {
      sa += gp[i];
      sb += gp[i] * (xp[i] - mu);
    }
    a = sa;
    b = sb * istd[p % s.c];
  });
}

void bn_train_backward(const BnShape& s, const float* x, const float* gamma, const float* mean, const float* var,
                       float eps, const float* gy, float* gx, float* ggamma, float* gbeta) {
  std::vector<float> istd(s.c);
  for (int64_t c = 0; c < s.c; c++) istd[c] = bn_invstd(var[c], eps);
  std::vector<double> sum_gy, sum_gy_xhat;
  grad_sums(s, x, mean, istd.data(), gy, sum_gy, sum_gy_xhat);
  for (int64_t c = 0; c < s.c; c++) {
    if (ggamma) ggamma[c] = (float)sum_gy_xhat[c];
    if (gbeta) gbeta[c] = (float)sum_gy[c];
  }
  if (!gx) return;
  // gx = gamma invstd / M (M gy - Σ gy - xhat Σ gy xhat) = k (gy - a - (x - mean) b), see bn_train_grad_x;
  // sync-BN: the sums and M of the global batch (gamma's and beta's gradients above stay this process's).
  double m = (double)(s.n * s.hw);
  if (const BatchSumFn sync = batch_norm_sync()) sync_sums(sync, sum_gy, sum_gy_xhat, m);
  std::vector<float> k(s.c), a(s.c), b(s.c);
  for (int64_t c = 0; c < s.c; c++) {
    k[c] = gamma[c] * istd[c];
    a[c] = (float)(sum_gy[c] / m);
    b[c] = (float)(sum_gy_xhat[c] * istd[c] / m);
  }
#pragma omp parallel for schedule(static) if (parallel(s))
  for (int64_t p = 0; p < s.n * s.c; p++) {
    const int64_t c = p % s.c;
    const float mu = mean[c], kc = k[c], ac = a[c], bc = b[c];
    const float* xp = x + p * s.hw;
    const float* gp = gy + p * s.hw;
    float* out = gx + p * s.hw;
#pragma omp simd
    for (int64_t i = 0; i < s.hw; i++) out[i] = bn_train_grad_x(gp[i], xp[i], mu, kc, ac, bc);
  }
}

void bn_eval_backward(const BnShape& s, const float* x, const float* gamma, const float* running_mean,
                      const float* running_var, float eps, const float* gy, float* gx, float* ggamma,
                      float* gbeta) {
  std::vector<float> istd(s.c);
  for (int64_t c = 0; c < s.c; c++) istd[c] = bn_invstd(running_var[c], eps);
  if (ggamma || gbeta) {
    std::vector<double> sum_gy, sum_gy_xhat;
    grad_sums(s, x, running_mean, istd.data(), gy, sum_gy, sum_gy_xhat);
    for (int64_t c = 0; c < s.c; c++) {
      if (ggamma) ggamma[c] = (float)sum_gy_xhat[c];
      if (gbeta) gbeta[c] = (float)sum_gy[c];
    }
  }
  if (!gx) return;
  // gx = gy gamma invstd (the statistics are constants)
#pragma omp parallel for schedule(static) if (parallel(s))
  for (int64_t p = 0; p < s.n * s.c; p++) {
    const float k = gamma[p % s.c] * istd[p % s.c];
    const float* gp = gy + p * s.hw;
    float* out = gx + p * s.hw;
#pragma omp simd
    for (int64_t i = 0; i < s.hw; i++) out[i] = gp[i] * k;
  }
}

// channel_mean_var in the plain layout (B = 1) or a blocked one (B = 8 or 16: planes [HW, B] of B channels, the
// loops vectorized over them); each channel's sums in double, in plane order. Two passes: the mean, then the
// variance about it (no E[x²] − E[x]² cancellation).
template <int B>
static void mean_var_forward(const BnShape& s, const float* x, float* mean, float* var) {
  const int64_t blocks = s.c / B;
  const double m = (double)(s.n * s.hw);
  // acc[j] += f(value, j) over channel block cb's values
  auto sum_over = [&](int64_t cb, double* acc, auto f) {
    for (int64_t n = 0; n < s.n; n++) {
      const float* p = x + (n * blocks + cb) * s.hw * B;
      if constexpr (B == 1) {
        double a = 0;
#pragma omp simd reduction(+ : a)
        for (int64_t i = 0; i < s.hw; i++) a += f((double)p[i], 0);
        acc[0] += a;
      } else {
        for (int64_t i = 0; i < s.hw; i++)
#pragma omp simd
          for (int j = 0; j < B; j++) acc[j] += f((double)p[i * B + j], j);
      }
    }
  };
#pragma omp parallel for schedule(static) if (parallel(s))
  for (int64_t cb = 0; cb < blocks; cb++) {
    double sum[B] = {}, mu[B], sq[B] = {};
    sum_over(cb, sum, [](double v, int) { return v; });
    for (int j = 0; j < B; j++) mu[j] = m > 0 ? sum[j] / m : 0.0;
    sum_over(cb, sq, [&](double v, int j) { return (v - mu[j]) * (v - mu[j]); });
    for (int j = 0; j < B; j++) {
      mean[cb * B + j] = (float)mu[j];
      var[cb * B + j] = m > 0 ? (float)(sq[j] / m) : 0.f;
    }
  }
}

// gx = gmean[c] / M + 2 gvar[c] (x − mean[c]) / M, one pass (a null gmean or gvar counts as zeros).
template <int B>
static void mean_var_backward(const BnShape& s, const float* x, const float* mean, const float* gmean,
                             const float* gvar, float* gx) {
  const int64_t blocks = s.c / B;
  const float m = (float)(s.n * s.hw);
#pragma omp parallel for schedule(static) if (parallel(s))
  for (int64_t cb = 0; cb < blocks; cb++) {
    float mu[B], a[B], k[B];  // gx = a + k (x − mu)
    for (int j = 0; j < B; j++) {
      mu[j] = mean[cb * B + j];
      a[j] = gmean ? gmean[cb * B + j] / m : 0.f;
      k[j] = gvar ? 2.f * gvar[cb * B + j] / m : 0.f;
    }
    for (int64_t n = 0; n < s.n; n++) {
      const int64_t o = (n * blocks + cb) * s.hw * B;
      const float* p = x + o;
      float* g = gx + o;
      if constexpr (B == 1) {
#pragma omp simd
        for (int64_t i = 0; i < s.hw; i++) g[i] = a[0] + k[0] * (p[i] - mu[0]);
      } else {
        for (int64_t i = 0; i < s.hw; i++)
#pragma omp simd
          for (int j = 0; j < B; j++) g[i * B + j] = a[j] + k[j] * (p[i * B + j] - mu[j]);
      }
    }
  }
}

void channel_mean_var_forward(const BnShape& s, const float* x, float* mean, float* var) {
  with_channel_block(s.block, "channel_mean_var_forward",
                     [&](auto b) { mean_var_forward<decltype(b)::value>(s, x, mean, var); });
}

void channel_mean_var_backward(const BnShape& s, const float* x, const float* mean, const float* gmean,
                              const float* gvar, float* gx) {
  with_channel_block(s.block, "channel_mean_var_backward",
                     [&](auto b) { mean_var_backward<decltype(b)::value>(s, x, mean, gmean, gvar, gx); });
}

}  // namespace engine::cpu
