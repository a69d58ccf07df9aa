// CPU kernels of the fused RepVGG block tail y = relu(Σ_b BN_b(x_b)) (ops.h, bn_add_relu), or the sum alone
// (BnSum::relu false; the kernels are instantiated for both, as for each channel block). The forward reads
// each branch twice (its batch statistics, then y); the backward reads y, gy and the branches once for the
// per-channel sums and once more for the gradients.
// As in batchnorm.cpp, sums are kept per plane in double and added per channel in plane order (results do
// not depend on the thread count), and the per-element math is engine/scalar_math.h's.
//
// Layout: a tensor is viewed as [N, C/B, HW, B], B = the channel block when blocked (8 or 16), else 1. Plane p = n * (C/B) + cb
// holds HW rows of B values, value (i, j) being channel cb * B + j. A plane is swept in tiles of rows so
// that its branches, y and gy stay in cache between the per-branch loops.
#include <algorithm>
#include <bit>
#include <cstdint>
#include <vector>

#include "engine/cpu/channel_block.h"
#include "engine/kernels.h"
#include "engine/scalar_math.h"

namespace engine::cpu {

namespace {

constexpr int64_t kTileRows = 256;

bool parallel(const BnSum& s) { return s.n * s.c * s.hw > 32768; }

template <int B>
struct Planes {
  int64_t cb, hw, count;
  explicit Planes(const BnSum& s) : cb(s.c / B), hw(s.hw), count(s.n * (s.c / B)) {}
  int64_t offset(int64_t p) const { return p * hw * B; }
  int64_t first_channel(int64_t p) const { return p % cb * B; }
};

// f(e, j) for the values e of rows [i0, i1) of a plane, j = e's channel within the plane (0 when B = 1).
template <int B, class F>
inline void for_rows(int64_t i0, int64_t i1, F f) {
  if constexpr (B == 1) {
#pragma omp simd
    for (int64_t e = i0; e < i1; e++) f(e, 0);
  } else {
    for (int64_t i = i0; i < i1; i++)
#pragma omp simd
      for (int j = 0; j < B; j++) f(i * B + j, j);
  }
}

// Per-plane sums, in double, over rows [i0, i1) of one plane: plain loops on restrict pointers, so that
// they vectorize (over the rows when B = 1, over the block's channels when B > 1).
// sa[j] += Σ d, sb[j] += Σ d², d = x - shift[j] (the channel's first value, see bn_batch_stats)
template <int B>
void sum_moments(const float* __restrict x, const float* __restrict shift, int64_t i0, int64_t i1,
                 double* __restrict sa, double* __restrict sb) {
  if constexpr (B == 1) {
    const double sh = shift[0];
    double a = 0, b = 0;
#pragma omp simd reduction(+ : a, b)
    for (int64_t e = i0; e < i1; e++) {
      const double d = x[e] - sh;
      a += d;
      b += d * d;
    }
    sa[0] += a;
    sb[0] += b;
  } else {
    double a[B] = {}, b[B] = {};
    for (int64_t i = i0; i < i1; i++)
#pragma omp simd
      for (int j = 0; j < B; j++) {
        const double d = x[i * B + j] - (double)shift[j];
        a[j] += d;
        b[j] += d * d;
      }
    for (int j = 0; j < B; j++) sa[j] += a[j], sb[j] += b[j];
  }
}

// The gradient at the sum, g: with the ReLU, 0 where y <= 0, else gy, a NaN y too, as PyTorch (as a bit
// mask, so that GCC vectorizes the loops); without it, gy.
template <bool Relu>
inline float sum_grad(float y, float gy) {
  if constexpr (!Relu) return gy;
  const uint32_t mask = y <= 0.f ? 0u : 0xffffffffu;
  return std::bit_cast<float>(std::bit_cast<uint32_t>(gy) & mask);
}

// sg[j] += Σ g, sgx[j] += Σ g (x - mu[j])
template <int B, bool Relu>
void sum_grads(const float* __restrict y, const float* __restrict gy, const float* __restrict x,
               const float* __restrict mu, int64_t i0, int64_t i1, double* __restrict sg, double* __restrict sgx) {
  if constexpr (B == 1) {
    const float m = mu[0];
    double a = 0, b = 0;
#pragma omp simd reduction(+ : a, b)
    for (int64_t e = i0; e < i1; e++) {
      const float g = sum_grad<Relu>(y[e], gy[e]);
      a += g;
      b += (double)g * (x[e] - m);
    }
    sg[0] += a;
    sgx[0] += b;
  } else {
    double a[B] = {}, b[B] = {};
    for (int64_t i = i0; i < i1; i++)
#pragma omp simd
      for (int j = 0; j < B; j++) {
        const float g = sum_grad<Relu>(y[i * B + j], gy[i * B + j]);
        a[j] += g;
        b[j] += (double)g * (x[i * B + j] - mu[j]);
      }
    for (int j = 0; j < B; j++) sg[j] += a[j], sgx[j] += b[j];
  }
}

// Per-channel sums of q quantities: plane_sums(p, acc) adds plane p's into acc [q][B] (zeroed), and the
// planes' sums are added per channel in plane order into out [q][C].
template <int B, class F>
void channel_sums(const BnSum& s, int q, std::vector<double>& out, F plane_sums) {
  const Planes<B> pl(s);
  std::vector<double> part(pl.count * q * B, 0.0);
#pragma omp parallel for schedule(static) if (parallel(s))
  for (int64_t p = 0; p < pl.count; p++) plane_sums(p, &part[p * q * B]);
  out.assign(q * s.c, 0.0);
  for (int64_t p = 0; p < pl.count; p++)
    for (int k = 0; k < q; k++)
      for (int j = 0; j < B; j++) out[k * s.c + pl.first_channel(p) + j] += part[(p * q + k) * B + j];
}

template <int B, bool Relu>
void forward(const BnSum& s, bool training, float momentum, float eps, float* y) {
  const Planes<B> pl(s);
  const int nb = s.count;
  if (training) {
    // Sums of d = x - x[0, c, 0] and d² (see bn_batch_stats), two per branch; sync-BN (ops.h): d = x -
    // running mean, the same on every process, and the sums and count added up over the processes.
    const BatchSumFn sync = batch_norm_sync();
    std::vector<double> sums;
    channel_sums<B>(s, 2 * nb, sums, [&](int64_t p, double* acc) {
      for (int k = 0; k < nb; k++) {
        const float* x = s.b[k].x + pl.offset(p);
        const float* shift = sync ? s.b[k].running_mean + pl.first_channel(p)
                                  : s.b[k].x + pl.offset(p % pl.cb);  // row 0 of the plane of n = 0
        sum_moments<B>(x, shift, 0, pl.hw, acc + 2 * k * B, acc + (2 * k + 1) * B);
      }
    });
    double m = (double)(s.n * s.hw);
    if (sync) {
      sums.push_back(m);
      sync(sums.data(), sums.size());
      m = sums.back();
    }
    for (int k = 0; k < nb; k++) {
      const BnBranch& b = s.b[k];
      for (int64_t c = 0; c < s.c; c++) {
        const float shift = sync ? b.running_mean[c] : b.x[c / B * s.hw * B + c % B];
        bn_batch_stats(sums[2 * k * s.c + c], sums[(2 * k + 1) * s.c + c], m, shift, b.mean[c], b.var[c]);
        b.running_mean[c] = bn_running_update(b.running_mean[c], b.mean[c], momentum);
        b.running_var[c] = bn_running_var_update(b.running_var[c], b.var[c], m, momentum);
      }
    }
  }
  std::vector<float> scale(nb * s.c);
  for (int k = 0; k < nb; k++)
    for (int64_t c = 0; c < s.c; c++) scale[k * s.c + c] = s.b[k].gamma[c] * bn_invstd(s.b[k].var[c], eps);

  // y = relu(((bn_0 + bn_1) + bn_2)) (or the sum alone), the order of the composed ops
#pragma omp parallel for schedule(static) if (parallel(s))
  for (int64_t p = 0; p < pl.count; p++) {
    const int64_t c0 = pl.first_channel(p);
    float* yp = y + pl.offset(p);
    for (int64_t i0 = 0; i0 < pl.hw; i0 += kTileRows) {
      const int64_t i1 = std::min(pl.hw, i0 + kTileRows);
      for (int k = 0; k < nb; k++) {
        const float* x = s.b[k].x + pl.offset(p);
        const float *mu = s.b[k].mean + c0, *sc = scale.data() + k * s.c + c0, *beta = s.b[k].beta + c0;
        const bool first = k == 0, last = k == nb - 1;
        for_rows<B>(i0, i1, [&](int64_t e, int j) {
          float v = bn_normalize(x[e], mu[j], sc[j], beta[j]);
          if (!first) v += yp[e];
          yp[e] = Relu && last && v <= 0.f ? 0.f : v;  // the ReLU; NaN stays NaN
        });
      }
    }
  }
}

template <int B, bool Relu>
void backward(const BnSum& s, bool training, float eps, const float* y, const float* gy) {
  const Planes<B> pl(s);
  const int nb = s.count;
  // g = sum_grad (gy, where y > 0 with the ReLU). Sums: [0] Σg, [1 + k] Σ g (x_k - mean_k).
  std::vector<double> sums;
  channel_sums<B>(s, 1 + nb, sums, [&](int64_t p, double* acc) {
    const int64_t c0 = pl.first_channel(p);
    const float *yp = y + pl.offset(p), *gp = gy + pl.offset(p);
    for (int64_t i0 = 0; i0 < pl.hw; i0 += kTileRows) {
      const int64_t i1 = std::min(pl.hw, i0 + kTileRows);
      for (int k = 0; k < nb; k++) {
        const float* x = s.b[k].x + pl.offset(p);
        const float* mu = s.b[k].mean + c0;
        double scratch[B] = {};  // Σg is kept from branch 0 only
        sum_grads<B, Relu>(yp, gp, x, mu, i0, i1, k == 0 ? acc : scratch, acc + (1 + k) * B);
      }
    }
  });

  // Per channel: istd, k = gamma istd, a = Σg / M, q = Σ g x̂ istd / M (bn_train_grad_x); eval: a = q = 0.
  // Sync-BN (ops.h): gamma's and beta's gradients from this process's sums, a and q from the global ones.
  double m = (double)(s.n * s.hw);
  std::vector<float> kk(nb * s.c), a(s.c), qq(nb * s.c);
  for (int k = 0; k < nb; k++) {
    const BnBranch& b = s.b[k];
    for (int64_t c = 0; c < s.c; c++) {
      const float istd = bn_invstd(b.var[c], eps);
      if (b.ggamma) b.ggamma[c] = (float)(sums[(1 + k) * s.c + c] * istd);
      if (b.gbeta) b.gbeta[c] = (float)sums[c];
      kk[k * s.c + c] = b.gamma[c] * istd;
    }
  }
  const BatchSumFn sync = training ? batch_norm_sync() : nullptr;
  if (sync) {
    sums.push_back(m);
    sync(sums.data(), sums.size());
    m = sums.back();
  }
  for (int64_t c = 0; c < s.c; c++) a[c] = training ? (float)(sums[c] / m) : 0.f;
  for (int k = 0; k < nb; k++)
    for (int64_t c = 0; c < s.c; c++) {
      const float istd = bn_invstd(s.b[k].var[c], eps);
      qq[k * s.c + c] = training ? (float)(sums[(1 + k) * s.c + c] * istd * istd / m) : 0.f;
    }
  bool any_gx = false;
  for (int k = 0; k < nb; k++) any_gx |= s.b[k].gx != nullptr;
  if (!any_gx) return;

#pragma omp parallel for schedule(static) if (parallel(s))
  for (int64_t p = 0; p < pl.count; p++) {
    const int64_t c0 = pl.first_channel(p);
    const float *yp = y + pl.offset(p), *gp = gy + pl.offset(p);
    const float* ac = a.data() + c0;
    for (int64_t i0 = 0; i0 < pl.hw; i0 += kTileRows) {
      const int64_t i1 = std::min(pl.hw, i0 + kTileRows);
      for (int k = 0; k < nb; k++) {
        if (!s.b[k].gx) continue;
        const float* x = s.b[k].x + pl.offset(p);
        float* gx = s.b[k].gx + pl.offset(p);
        const float *mu = s.b[k].mean + c0, *kc = kk.data() + k * s.c + c0, *qc = qq.data() + k * s.c + c0;
        for_rows<B>(i0, i1, [&](int64_t e, int j) {
          gx[e] = bn_train_grad_x(sum_grad<Relu>(yp[e], gp[e]), x[e], mu[j], kc[j], ac[j], qc[j]);
        });
      }
    }
  }
}

}  // namespace

void bn_sum_relu_forward(const BnSum& s, bool training, float momentum, float eps, float* y) {
  if (s.n * s.c * s.hw == 0) return;
  with_channel_block(s.block, "bn_sum_relu_forward", [&](auto b) {
    constexpr int B = decltype(b)::value;
    s.relu ? forward<B, true>(s, training, momentum, eps, y) : forward<B, false>(s, training, momentum, eps, y);
  });
}

void bn_sum_relu_backward(const BnSum& s, bool training, float eps, const float* y, const float* gy) {
  if (s.n * s.c * s.hw == 0) return;
  with_channel_block(s.block, "bn_sum_relu_backward", [&](auto b) {
    constexpr int B = decltype(b)::value;
    s.relu ? backward<B, true>(s, training, eps, y, gy) : backward<B, false>(s, training, eps, y, gy);
  });
}

}  // namespace engine::cpu
