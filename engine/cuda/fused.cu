// The fused RepVGG block tail on CUDA, y = relu(Σ_b BN_b(x_b)) for 1 to 3 branches, or the sum alone
// (BnSum::relu false) (ops.h, bn_add_relu; the CPU one: engine/cpu/fused.cpp). The per-element math is
// engine/scalar_math.h's; per-channel sums run one block per channel in a fixed order (deterministic).
// The fused op takes the plain layout [N, C, HW] on CUDA (the blocked one is the CPU's).
#include "engine/cuda/common.cuh"
#include "engine/scalar_math.h"

namespace engine::cuda {

constexpr int kFusedThreads = 512;

// y = relu(((bn_0 + bn_1) + bn_2)) (or the sum alone), the order of the composed ops; scale [count, C] =
// gamma invstd.
struct SumRelu {
  BnSum s;
  const float* scale;
  float* y;
  template <class I> __device__ void operator()(I c, int64_t i) const {
    float v = 0.f;
    for (int k = 0; k < s.count; k++) {
      const BnBranch& b = s.b[k];
      const float u = bn_normalize(b.x[i], b.mean[c], scale[k * s.c + c], b.beta[c]);
      v = k == 0 ? u : u + v;
    }
    y[i] = s.relu && v <= 0.f ? 0.f : v;  // the ReLU; NaN stays NaN
  }
};

void bn_sum_relu_forward(const BnSum& s, bool training, float momentum, float eps, float* y) {
  ENGINE_CHECK(!s.block, "the blocked layout is the CPU's; on CUDA bn_add_relu takes [N, C, H, W]");
  if (s.n * s.c * s.hw == 0) return;
  DeviceBuffer scale(s.count * s.c * sizeof(float));
  for (int k = 0; k < s.count; k++) {
    const BnBranch& b = s.b[k];
    float* sk = scale.as<float>() + k * s.c;
    if (training)
      bn_statistics(BnShape{s.n, s.c, s.hw}, b.x, b.gamma, b.running_mean, b.running_var, momentum, eps, b.mean,
                    b.var, sk);
    else
      bn_scale(s.c, b.gamma, b.var, eps, sk);
  }
  channel_map(s.n, s.c, s.hw, SumRelu{s, scale.as<float>(), y});
}

// Channel blockIdx.x, with g = gy (where y > 0 with the ReLU, else 0): Σg and per branch Σ g (x_k - mean_k), then
// ggamma_k = Σ g x̂_k and gbeta_k = Σg where asked for, and coef [count, 3, C] = the k, a, b of
// bn_train_grad_x (a = b = 0 in eval, where the statistics are constants).
__global__ void bn_sum_relu_sums_kernel(BnSum s, bool training, float eps, const float* y, const float* gy,
                                        float* coef) {
  __shared__ double shared[kFusedThreads];
  const int64_t c = blockIdx.x;
  double sum_g = 0, sum_gx[3] = {0, 0, 0};
  for_channel(s.n, s.c, s.hw, c, [&](int64_t i) {
    const float g = s.relu && y[i] <= 0.f ? 0.f : gy[i];  // NaN passes gy, as the CPU
    sum_g += g;
    for (int k = 0; k < s.count; k++) sum_gx[k] += (double)g * (s.b[k].x[i] - s.b[k].mean[c]);  // as the CPU
  });
  sum_g = block_sum(sum_g, shared);
  for (int k = 0; k < s.count; k++) sum_gx[k] = block_sum(sum_gx[k], shared);
  if (threadIdx.x != 0) return;
  const double m = (double)(s.n * s.hw);
  for (int k = 0; k < s.count; k++) {
    const BnBranch& b = s.b[k];
    const float istd = bn_invstd(b.var[c], eps);
    const double sum_g_xhat = sum_gx[k] * istd;
    if (b.ggamma) b.ggamma[c] = (float)sum_g_xhat;
    if (b.gbeta) b.gbeta[c] = (float)sum_g;
    float* ck = coef + 3 * k * s.c;
    ck[c] = b.gamma[c] * istd;
    ck[s.c + c] = training ? (float)(sum_g / m) : 0.f;
    ck[2 * s.c + c] = training ? (float)(sum_g_xhat * istd / m) : 0.f;
  }
}

struct SumReluGradX {  // gx_k = bn_train_grad_x(g, x_k, mean_k, k, a, b) for the branches that want it
  BnSum s;
  const float *y, *gy, *coef;
  template <class I> __device__ void operator()(I c, int64_t i) const {
    const float g = s.relu && y[i] <= 0.f ? 0.f : gy[i];  // NaN passes gy, as the CPU
    for (int k = 0; k < s.count; k++) {
      const BnBranch& b = s.b[k];
      if (!b.gx) continue;
      const float* ck = coef + 3 * k * s.c;
      b.gx[i] = bn_train_grad_x(g, b.x[i], b.mean[c], ck[c], ck[s.c + c], ck[2 * s.c + c]);
    }
  }
};

void bn_sum_relu_backward(const BnSum& s, bool training, float eps, const float* y, const float* gy) {
  ENGINE_CHECK(!s.block, "the blocked layout is the CPU's; on CUDA bn_add_relu takes [N, C, H, W]");
  if (s.n * s.c * s.hw == 0) return;
  DeviceBuffer coef(3 * s.count * s.c * sizeof(float));
  LAUNCH(bn_sum_relu_sums_kernel, (unsigned)s.c, kFusedThreads, s, training, eps, y, gy, coef.as<float>());
  bool any_gx = false;
  for (int k = 0; k < s.count; k++) any_gx |= s.b[k].gx != nullptr;
  if (any_gx) channel_map(s.n, s.c, s.hw, SumReluGradX{s, y, gy, coef.as<float>()});
}

}  // namespace engine::cuda
