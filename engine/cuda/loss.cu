// Softmax cross-entropy with label smoothing on CUDA (the CPU one: engine/cpu/loss.cpp; the shared
// arithmetic: engine/scalar_math.h). One block per row of logits [K]; sums in double with a fixed tree.
// Labels on the GPU are not range-checked by the op (that would copy them to the host every step): a row
// whose label is outside [0, K) gets a NaN loss, so a bad label cannot go unnoticed.
#include <math.h>

#include <algorithm>

#include "engine/cuda/common.cuh"
#include "engine/scalar_math.h"

namespace engine::cuda {

constexpr int kCeThreads = 128;

// loss_rows[r] = lse - (1 - ε) z[y] - ε / K Σ_j z[j] with z = logits[r] - max and lse = log Σ_j exp z[j];
// probs[r, j] = exp(z[j] - lse).
__global__ void cross_entropy_forward_kernel(int64_t n, int64_t k, const float* logits, const int32_t* labels,
                                             float smoothing, float* loss_rows, float* probs) {
  __shared__ float shared_max[kCeThreads];
  __shared__ double shared_sum[kCeThreads];
  for (int64_t r = blockIdx.x; r < n; r += gridDim.x) {
    const float* row = logits + r * k;
    float* p = probs + r * k;
    float top = -INFINITY;
    for (int64_t j = threadIdx.x; j < k; j += blockDim.x) top = fmaxf(top, row[j]);
    shared_max[threadIdx.x] = top;
    __syncthreads();
    for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
      if (threadIdx.x < s) shared_max[threadIdx.x] = fmaxf(shared_max[threadIdx.x], shared_max[threadIdx.x + s]);
      __syncthreads();
    }
    top = shared_max[0];
    double sum_exp = 0, sum_z = 0;
    for (int64_t j = threadIdx.x; j < k; j += blockDim.x) {
      const float z = row[j] - top;
      p[j] = expf(z);
      sum_exp += p[j];
      sum_z += z;
    }
    sum_exp = block_sum(sum_exp, shared_sum);
    sum_z = block_sum(sum_z, shared_sum);
    const float inv = (float)(1.0 / sum_exp);
    for (int64_t j = threadIdx.x; j < k; j += blockDim.x) p[j] *= inv;  // this thread's own p[j]
    if (threadIdx.x == 0) {
      const int32_t y = labels[r];
      loss_rows[r] = y >= 0 && y < k ? ce_row_loss(log(sum_exp), row[y] - top, sum_z, smoothing, k) : NAN;
    }
  }
}

void cross_entropy_forward(int64_t n, int64_t k, const float* logits, const int32_t* labels, float smoothing,
                           float* loss_rows, float* probs) {
  if (n == 0 || k == 0) return;
  LAUNCH(cross_entropy_forward_kernel, (unsigned)std::min<int64_t>(n, 1 << 20), kCeThreads, n, k, logits, labels,
         smoothing, loss_rows, probs);
}

// glogits[r, j] = gscale (probs[r, j] - target[r, j]),  target = (1 - ε) onehot(y_r) + ε / K
__global__ void cross_entropy_backward_kernel(int64_t total, int64_t k, const float* probs, const int32_t* labels,
                                              float smoothing, float gscale, float* glogits) {
  GRID_STRIDE(i, total) glogits[i] = ce_grad(probs[i], labels[i / k] == i % k, smoothing, k, gscale);
}

void cross_entropy_backward(int64_t n, int64_t k, const float* probs, const int32_t* labels, float smoothing,
                            float gscale, float* glogits) {
  if (n * k > 0)
    LAUNCH(cross_entropy_backward_kernel, blocks_for(n * k), kThreads, n * k, k, probs, labels, smoothing, gscale,
           glogits);
}

// One thread per row (K is a class count): both softmaxes at 1/T and the row's T² KL(p_t || p_s), in double.
__global__ void distill_kl_forward_kernel(int64_t n, int64_t k, const float* student, const float* teacher,
                                          float temperature, float* kl_rows, float* p_student, float* p_teacher) {
  GRID_STRIDE(i, n) {
    const float *s = student + i * k, *t = teacher + i * k;
    float *ps = p_student + i * k, *pt = p_teacher + i * k;
    float top_s = -INFINITY, top_t = -INFINITY;
    for (int64_t j = 0; j < k; j++) top_s = fmaxf(top_s, s[j] / temperature), top_t = fmaxf(top_t, t[j] / temperature);
    double sum_s = 0, sum_t = 0;
    for (int64_t j = 0; j < k; j++) {
      ps[j] = expf(s[j] / temperature - top_s), pt[j] = expf(t[j] / temperature - top_t);
      sum_s += ps[j], sum_t += pt[j];
    }
    const double lse_s = log(sum_s), lse_t = log(sum_t);
    double kl = 0;
    for (int64_t j = 0; j < k; j++) {
      ps[j] = (float)(ps[j] / sum_s), pt[j] = (float)(pt[j] / sum_t);
      if (pt[j] > 0) kl += (double)pt[j] * ((t[j] / temperature - top_t - lse_t) - (s[j] / temperature - top_s - lse_s));
    }
    kl_rows[i] = (float)(kl * temperature * temperature);
  }
}

void distill_kl_forward(int64_t n, int64_t k, const float* student, const float* teacher, float temperature,
                        float* kl_rows, float* p_student, float* p_teacher) {
  if (n > 0 && k > 0)
    LAUNCH(distill_kl_forward_kernel, blocks_for(n), kThreads, n, k, student, teacher, temperature, kl_rows, p_student,
           p_teacher);
}

__global__ void distill_kl_backward_kernel(int64_t total, const float* p_student, const float* p_teacher, float gscale,
                                           float* gstudent) {
  GRID_STRIDE(i, total) gstudent[i] = gscale * (p_student[i] - p_teacher[i]);
}

void distill_kl_backward(int64_t total, const float* p_student, const float* p_teacher, float gscale, float* gstudent) {
  if (total > 0) LAUNCH(distill_kl_backward_kernel, blocks_for(total), kThreads, total, p_student, p_teacher, gscale, gstudent);
}

}  // namespace engine::cuda
