// Learning-rate schedules (see schedule.h), in double as PyTorch computes them in Python floats.
#include "engine/schedule.h"

#include <cmath>
#include <numbers>
#include <string>

#include "engine/tensor.h"

namespace engine {

double cosine_lr(double base_lr, double eta_min, int t_max, int epoch) {
  ENGINE_CHECK(t_max > 0, "t_max must be positive, got " + std::to_string(t_max));
  ENGINE_CHECK(epoch >= 0, "negative epoch " + std::to_string(epoch));
  return eta_min + (base_lr - eta_min) * (1 + std::cos(std::numbers::pi * epoch / t_max)) / 2;
}

double step_lr(double base_lr, double gamma, int step_size, int epoch) {
  ENGINE_CHECK(step_size > 0, "step_size must be positive, got " + std::to_string(step_size));
  ENGINE_CHECK(epoch >= 0, "negative epoch " + std::to_string(epoch));
  return base_lr * std::pow(gamma, epoch / step_size);
}

double warmup_lr(double base_lr, int warmup_epochs, int epoch) {
  ENGINE_CHECK(warmup_epochs > 0, "warmup_epochs must be positive, got " + std::to_string(warmup_epochs));
  ENGINE_CHECK(epoch >= 0, "negative epoch " + std::to_string(epoch));
  return epoch >= warmup_epochs ? base_lr : base_lr * (epoch + 1) / warmup_epochs;
}

float Schedule::lr_at(int epoch) const {
  ENGINE_CHECK(epoch >= 0, "negative epoch " + std::to_string(epoch));
  ENGINE_CHECK(warmup_epochs >= 0, "negative warmup_epochs " + std::to_string(warmup_epochs));
  if (epoch < warmup_epochs) return (float)warmup_lr(base_lr, warmup_epochs, epoch);
  int e = epoch - warmup_epochs;
  switch (kind) {
    case ScheduleKind::constant: return base_lr;
    case ScheduleKind::cosine: return (float)cosine_lr(base_lr, eta_min, t_max, e);
    case ScheduleKind::step: return (float)step_lr(base_lr, gamma, step_size, e);
  }
  fail("unknown schedule kind");
}

}  // namespace engine
