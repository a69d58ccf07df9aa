// Batch norm on CUDA (the CPU one: engine/cpu/batchnorm.cpp; the shared arithmetic: engine/scalar_math.h).
// x [N, C, HW]: channel c's M = N * HW values are the planes x[n, c, :]. Per-channel sums run in one block
// per channel, each thread over a fixed set of values in a fixed order, then a fixed tree: deterministic,
// no atomics; in double, as on the CPU. The element-wise passes run over all elements with per-channel
// coefficients computed by those blocks.
#include "engine/cuda/common.cuh"
#include "engine/scalar_math.h"

namespace engine::cuda {

constexpr int kBnThreads = 512;

// Training statistics of channel blockIdx.x (sums of d = x - x[0, c, 0] and d², as the CPU's): the batch
// mean and biased variance, the running update, and scale = gamma / sqrt(var + eps) for the normalize pass.
__global__ void bn_stats_kernel(BnShape s, const float* x, const float* gamma, float* running_mean,
                                float* running_var, float momentum, float eps, float* mean, float* var,
                                float* scale) {
  __shared__ double shared[kBnThreads];
  const int64_t c = blockIdx.x;
  const float shift = x[c * s.hw];
  double sum_d = 0, sum_d2 = 0;
  for_channel(s.n, s.c, s.hw, c, [&](int64_t i) {
    const double d = (double)x[i] - shift;
    sum_d += d;
    sum_d2 += d * d;
  });
  sum_d = block_sum(sum_d, shared);
  sum_d2 = block_sum(sum_d2, shared);
  if (threadIdx.x == 0) {
    const double m = (double)(s.n * s.hw);
    float mu, v;
    bn_batch_stats(sum_d, sum_d2, m, shift, mu, v);
    mean[c] = mu;
    var[c] = v;
    running_mean[c] = bn_running_update(running_mean[c], mu, momentum);
    running_var[c] = bn_running_var_update(running_var[c], v, m, momentum);
    scale[c] = gamma[c] * bn_invstd(v, eps);
  }
}

// scale[c] = gamma[c] / sqrt(var[c] + eps), one thread per channel.
__global__ void bn_scale_kernel(int64_t c, const float* gamma, const float* var, float eps, float* scale) {
  GRID_STRIDE(i, c) scale[i] = gamma[i] * bn_invstd(var[i], eps);
}

// Channel blockIdx.x's Σgy and Σgy·x̂ (x̂ = (x - mean) invstd) into gbeta and ggamma when given, and the
// training input-gradient coefficients coef [3, C] = k, a, b of bn_train_grad_x when coef is given.
__global__ void bn_grad_sums_kernel(BnShape s, const float* x, const float* gamma, const float* mean,
                                    const float* var, float eps, const float* gy, float* ggamma, float* gbeta,
                                    float* coef) {
  __shared__ double shared[kBnThreads];
  const int64_t c = blockIdx.x;
  const double mu = mean[c];
  double sum_gy = 0, sum_gy_xc = 0;  // Σgy, Σgy (x - mean)
  for_channel(s.n, s.c, s.hw, c, [&](int64_t i) {
    sum_gy += gy[i];
    sum_gy_xc += gy[i] * (x[i] - mu);
  });
  sum_gy = block_sum(sum_gy, shared);
  sum_gy_xc = block_sum(sum_gy_xc, shared);
  if (threadIdx.x == 0) {
    const float istd = bn_invstd(var[c], eps);
    const double sum_gy_xhat = sum_gy_xc * istd, m = (double)(s.n * s.hw);
    if (ggamma) ggamma[c] = (float)sum_gy_xhat;
    if (gbeta) gbeta[c] = (float)sum_gy;
    if (coef) {
      coef[c] = gamma[c] * istd;
      coef[s.c + c] = (float)(sum_gy / m);
      coef[2 * s.c + c] = (float)(sum_gy_xhat * istd / m);
    }
  }
}

struct Normalize {  // y = (x - mean) scale + beta
  const float *x, *mean, *scale, *beta;
  float* y;
  template <class I> __device__ void operator()(I c, int64_t i) const {
    y[i] = bn_normalize(x[i], mean[c], scale[c], beta[c]);
  }
};

struct TrainGradX {  // gx = k (gy - a - (x - mean) b), coef [3, C] = k, a, b
  const float *x, *gy, *mean, *coef;
  int64_t channels;
  float* gx;
  template <class I> __device__ void operator()(I c, int64_t i) const {
    gx[i] = bn_train_grad_x(gy[i], x[i], mean[c], coef[c], coef[channels + c], coef[2 * channels + c]);
  }
};

struct EvalGradX {  // gx = gy gamma invstd (the statistics are constants)
  const float *gy, *k;
  float* gx;
  template <class I> __device__ void operator()(I c, int64_t i) const { gx[i] = gy[i] * k[c]; }
};

void bn_statistics(const BnShape& s, const float* x, const float* gamma, float* running_mean, float* running_var,
                   float momentum, float eps, float* mean, float* var, float* scale) {
  if (s.n * s.c * s.hw == 0) return;
  LAUNCH(bn_stats_kernel, (unsigned)s.c, kBnThreads, s, x, gamma, running_mean, running_var, momentum, eps, mean,
         var, scale);
}

void bn_scale(int64_t c, const float* gamma, const float* var, float eps, float* scale) {
  if (c > 0) LAUNCH(bn_scale_kernel, blocks_for(c), kThreads, c, gamma, var, eps, scale);
}

void bn_train_forward(const BnShape& s, const float* x, const float* gamma, const float* beta,
                      float* running_mean, float* running_var, float momentum, float eps, float* mean, float* var,
                      float* y) {
  if (s.n * s.c * s.hw == 0) return;
  DeviceBuffer scale(s.c * sizeof(float));
  bn_statistics(s, x, gamma, running_mean, running_var, momentum, eps, mean, var, scale.as<float>());
  channel_map(s.n, s.c, s.hw, Normalize{x, mean, scale.as<float>(), beta, y});
}

void bn_eval_forward(const BnShape& s, const float* x, const float* gamma, const float* beta,
                     const float* running_mean, const float* running_var, float eps, float* y) {
  if (s.n * s.c * s.hw == 0) return;
  DeviceBuffer scale(s.c * sizeof(float));
  bn_scale(s.c, gamma, running_var, eps, scale.as<float>());
  channel_map(s.n, s.c, s.hw, Normalize{x, running_mean, scale.as<float>(), beta, y});
}

void bn_train_backward(const BnShape& s, const float* x, const float* gamma, const float* mean, const float* var,
                       float eps, const float* gy, float* gx, float* ggamma, float* gbeta) {
  if (s.n * s.c * s.hw == 0) return;
  DeviceBuffer coef(gx ? 3 * s.c * sizeof(float) : 0);
  LAUNCH(bn_grad_sums_kernel, (unsigned)s.c, kBnThreads, s, x, gamma, mean, var, eps, gy, ggamma, gbeta,
         coef.as<float>());
  if (gx) channel_map(s.n, s.c, s.hw, TrainGradX{x, gy, mean, coef.as<float>(), s.c, gx});
}

void bn_eval_backward(const BnShape& s, const float* x, const float* gamma, const float* running_mean,
                      const float* running_var, float eps, const float* gy, float* gx, float* ggamma,
                      float* gbeta) {
  if (s.n * s.c * s.hw == 0) return;
  if (ggamma || gbeta)
    LAUNCH(bn_grad_sums_kernel, (unsigned)s.c, kBnThreads, s, x, gamma, running_mean, running_var, eps, gy, ggamma,
           gbeta, nullptr);
  if (!gx) return;
  DeviceBuffer k(s.c * sizeof(float));
  bn_scale(s.c, gamma, running_var, eps, k.as<float>());
  channel_map(s.n, s.c, s.hw, EvalGradX{gy, k.as<float>(), gx});
}

// One block per channel; the sums in double, in a fixed order (deterministic): the mean, then the variance
// about it.
__global__ void channel_mean_var_kernel(BnShape s, float* mean, float* var, const float* x) {
  __shared__ double shared[kThreads];
  const int64_t c = blockIdx.x;
  const double m = (double)(s.n * s.hw);
  double a = 0;
  for_channel(s.n, s.c, s.hw, c, [&](int64_t i) { a += (double)x[i]; });
  const double mu = m > 0 ? block_sum(a, shared) / m : 0.0;  // block_sum leaves shared free to reuse
  double q = 0;
  for_channel(s.n, s.c, s.hw, c, [&](int64_t i) { q += ((double)x[i] - mu) * ((double)x[i] - mu); });
  q = block_sum(q, shared);
  if (threadIdx.x == 0) {
    mean[c] = (float)mu;
    var[c] = m > 0 ? (float)(q / m) : 0.f;
  }
}

void channel_mean_var_forward(const BnShape& s, const float* x, float* mean, float* var) {
  if (s.c > 0) LAUNCH(channel_mean_var_kernel, (unsigned)s.c, kThreads, s, mean, var, x);
}

struct MeanVarGradX {  // gx = gmean / M + 2 gvar (x - mean) / M
  const float *x, *mean, *gmean, *gvar;
  float m;
  float* gx;
  template <class I> __device__ void operator()(I c, int64_t i) const {
    gx[i] = (gmean ? gmean[c] / m : 0.f) + (gvar ? 2.f * gvar[c] / m : 0.f) * (x[i] - mean[c]);
  }
};

void channel_mean_var_backward(const BnShape& s, const float* x, const float* mean, const float* gmean,
                              const float* gvar, float* gx) {
  channel_map(s.n, s.c, s.hw, MeanVarGradX{x, mean, gmean, gvar, (float)(s.n * s.hw), gx});
}

}  // namespace engine::cuda
