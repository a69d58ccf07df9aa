// CPU kernels for softmax cross-entropy with label smoothing: one row of logits [K] per sample, rows in
// parallel. A row is shifted by its max before exp (stable log-softmax) and summed in double. The per-row
// and per-element math is in engine/scalar_math.h, shared with engine/cuda/loss.cu.
#include <algorithm>
#include <cmath>
#include <vector>

#include "engine/kernels.h"
#include "engine/scalar_math.h"

namespace engine::cpu {

// loss_rows[i] = lse - (1 - ε) z[y] - ε / K Σ_j z[j], with z = logits[i] - max and lse = log Σ_j exp z[j];
// probs[i, j] = exp(z[j] - lse).
void cross_entropy_forward(int64_t n, int64_t k, const float* logits, const int32_t* labels, float smoothing,
                           float* loss_rows, float* probs) {
#pragma omp parallel for schedule(static) if (n * k > 32768)
  for (int64_t i = 0; i < n; i++) {
    const float* row = logits + i * k;
    float* p = probs + i * k;
    const float top = *std::max_element(row, row + k);
    double sum_exp = 0, sum_z = 0;
    for (int64_t j = 0; j < k; j++) {
      const float z = row[j] - top;
      p[j] = std::exp(z);
      sum_exp += p[j];
      sum_z += z;
    }
    loss_rows[i] = ce_row_loss(std::log(sum_exp), row[labels[i]] - top, sum_z, smoothing, k);
    const float inv = (float)(1.0 / sum_exp);
    for (int64_t j = 0; j < k; j++) p[j] *= inv;
  }
}

// glogits[i, j] = gscale (probs[i, j] - ε / K - (1 - ε) [j == y_i])
void cross_entropy_backward(int64_t n, int64_t k, const float* probs, const int32_t* labels, float smoothing,
                            float gscale, float* glogits) {
#pragma omp parallel for schedule(static) if (n * k > 32768)
  for (int64_t i = 0; i < n; i++) {
    const float* p = probs + i * k;
    float* g = glogits + i * k;
    const int32_t y = labels[i];
#pragma omp simd
    for (int64_t j = 0; j < k; j++) g[j] = ce_grad(p[j], j == y, smoothing, k, gscale);
  }
}

// z = logits / T, shifted by its max; p = softmax(z), written; returns log Σ exp z (the row's log-sum-exp).
static double softmax_row(const float* logits, int64_t k, float temperature, float* z, float* p) {
  float top = -INFINITY;
  for (int64_t j = 0; j < k; j++) top = std::max(top, logits[j] / temperature);
  double sum = 0;
  for (int64_t j = 0; j < k; j++) {
    z[j] = logits[j] / temperature - top;
    p[j] = std::exp(z[j]);
    sum += p[j];
  }
  const float inv = (float)(1.0 / sum);
  for (int64_t j = 0; j < k; j++) p[j] *= inv;
  return std::log(sum);
}

// kl_rows[i] = T² Σ_j p_t[j] (log p_t[j] − log p_s[j]), log p = z − lse
void distill_kl_forward(int64_t n, int64_t k, const float* student, const float* teacher, float temperature,
                        float* kl_rows, float* p_student, float* p_teacher) {
#pragma omp parallel for schedule(static) if (n * k > 32768)
  for (int64_t i = 0; i < n; i++) {
    std::vector<float> zs(k), zt(k);
    const double lse_s = softmax_row(student + i * k, k, temperature, zs.data(), p_student + i * k);
    const double lse_t = softmax_row(teacher + i * k, k, temperature, zt.data(), p_teacher + i * k);
    double kl = 0;
    for (int64_t j = 0; j < k; j++)
      if (p_teacher[i * k + j] > 0) kl += (double)p_teacher[i * k + j] * ((zt[j] - lse_t) - (zs[j] - lse_s));
    kl_rows[i] = (float)(kl * temperature * temperature);
  }
}

void distill_kl_backward(int64_t total, const float* p_student, const float* p_teacher, float gscale, float* gstudent) {
#pragma omp parallel for simd schedule(static) if (total > 32768)
  for (int64_t i = 0; i < total; i++) gstudent[i] = gscale * (p_student[i] - p_teacher[i]);
}

}  // namespace engine::cpu
