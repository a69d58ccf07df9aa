// Softmax cross-entropy with label smoothing and the distillation loss (forward and backward), and top-k hit counts.
// Kernels: engine/cpu/loss.cpp.
#include <cmath>

#include "engine/autograd.h"
#include "engine/kernels.h"
#include "engine/ops.h"

namespace engine {

// logits f32 [N, K] and labels i32 [N] on one device.
static void check_logits_labels(const Tensor& logits, const Tensor& labels) {
  ENGINE_CHECK(logits.defined() && logits.dim() == 2 && logits.dtype() == DType::f32,
               "expects logits f32 [N, K], got " + logits.str());
  ENGINE_CHECK(labels.defined() && labels.dtype() == DType::i32 && labels.shape() == Shape{logits.size(0)},
               "expects labels i32 [" + std::to_string(logits.size(0)) + "] for logits " + logits.str() + ", got " +
                   labels.str());
  ENGINE_CHECK(labels.device() == logits.device(), "logits " + logits.str() + " and labels " + labels.str());
  ENGINE_CHECK(logits.size(0) > 0 && logits.size(1) > 0, "empty logits " + logits.str());
}

// Every label of a cpu tensor in [0, k).
static void check_label_range(const Tensor& labels, int64_t k) {
  const int32_t* y = labels.data<int32_t>();
  for (int64_t i = 0; i < labels.numel(); i++)
    ENGINE_CHECK(y[i] >= 0 && y[i] < k, "label " + std::to_string(y[i]) + " of row " + std::to_string(i) +
                                            " is outside [0, " + std::to_string(k) + ")");
}

// loss = mean_i [ -(1 - ε) log p[i, y_i] - ε / K Σ_k log p[i, k] ],  p = softmax(logits) per row
// glogits = (p - target) / N * gout,  target = (1 - ε) onehot(y) + ε / K
Tensor cross_entropy(const Tensor& logits, const Tensor& labels, float label_smoothing) {
  check_logits_labels(logits, labels);
  ENGINE_CHECK(label_smoothing >= 0.f && label_smoothing <= 1.f,
               "label_smoothing " + std::to_string(label_smoothing) + " is outside [0, 1]");
  const int64_t n = logits.size(0), k = logits.size(1);
  // Labels on the GPU are not checked here: that would copy them to the host every step.
  if (labels.device() == Device::cpu) check_label_range(labels, k);
  Tensor rows = Tensor::empty({n}, DType::f32, logits.device());      // [N] per-row losses
  Tensor probs = Tensor::empty({n, k}, DType::f32, logits.device());  // [N, K] softmax, for the backward
  DISPATCH(logits.device(), cross_entropy_forward, n, k, logits.f32(), labels.data<int32_t>(), label_smoothing,
           rows.f32(), probs.f32());
  Tensor loss = mean_all(rows);
  record(loss, "cross_entropy", {logits, labels}, [probs, label_smoothing](const Tensor& out, const Tensor& gout) {
    const Tensor &logits = out.grad_fn()->inputs[0], &labels = out.grad_fn()->inputs[1];
    const int64_t n = logits.size(0), k = logits.size(1);
    Tensor g = Tensor::empty(logits.shape(), DType::f32, logits.device());
    DISPATCH(logits.device(), cross_entropy_backward, n, k, probs.f32(), labels.data<int32_t>(), label_smoothing,
             gout.item() / (float)n, g.f32());
    accumulate_grad(logits, g);
  });
  return loss;
}

Tensor distillation_loss(const Tensor& student, const Tensor& teacher, float temperature) {
  ENGINE_CHECK(student.defined() && student.dim() == 2 && student.dtype() == DType::f32 && student.size(0) > 0 &&
                   student.size(1) > 0,
               "expects student logits f32 [N, K], got " + student.str());
  ENGINE_CHECK(teacher.defined() && teacher.shape() == student.shape() && teacher.dtype() == DType::f32 &&
                   teacher.device() == student.device(),
               "teacher logits " + teacher.str() + " for student logits " + student.str());
  ENGINE_CHECK(std::isfinite(temperature) && temperature > 0, "temperature " + std::to_string(temperature) + ", expected > 0");
  const int64_t n = student.size(0), k = student.size(1);
  Tensor rows = Tensor::empty({n}, DType::f32, student.device());
  Tensor p_student = Tensor::empty({n, k}, DType::f32, student.device());
  Tensor p_teacher = Tensor::empty({n, k}, DType::f32, student.device());
  DISPATCH(student.device(), distill_kl_forward, n, k, student.f32(), teacher.f32(), temperature, rows.f32(),
           p_student.f32(), p_teacher.f32());
  Tensor loss = mean_all(rows);
  record(loss, "distillation_loss", {student}, [p_student, p_teacher, temperature](const Tensor& out, const Tensor& gout) {
    const Tensor& student = out.grad_fn()->inputs[0];
    Tensor g = Tensor::empty(student.shape(), DType::f32, student.device());
    DISPATCH(student.device(), distill_kl_backward, student.numel(), p_student.f32(), p_teacher.f32(),
             gout.item() * temperature / (float)student.size(0), g.f32());
    accumulate_grad(student, g);
  });
  return loss;
}

// Ties: a row counts when fewer than k logits are strictly greater than its label's logit, so a label tied
// at the k-th place counts (torch.topk would pick among tied values arbitrarily). A NaN logit never counts.
int64_t topk_correct(const Tensor& logits, const Tensor& labels, int k) {
  check_logits_labels(logits, labels);
  const int64_t n = logits.size(0), classes = logits.size(1);
  ENGINE_CHECK(k >= 1 && k <= classes, "k = " + std::to_string(k) + " for " + std::to_string(classes) + " classes");
  // Counted on the host: an explicit copy for tensors on the GPU (to() is a no-op on the CPU).
  Tensor l = logits.to(Device::cpu), y = labels.to(Device::cpu);
  check_label_range(y, classes);
  const float* p = l.f32();
  const int32_t* py = y.data<int32_t>();
  int64_t correct = 0;
#pragma omp parallel for schedule(static) reduction(+ : correct) if (n * classes > 32768)
  for (int64_t i = 0; i < n; i++) {
    const float* row = p + i * classes;
    const float v = row[py[i]];
    int64_t greater = 0;
    for (int64_t j = 0; j < classes; j++) greater += row[j] > v;
    correct += !std::isnan(v) && greater < k;
  }
  return correct;
}

}  // namespace engine
