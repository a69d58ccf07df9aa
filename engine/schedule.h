// Learning-rate schedules: the learning rate of an epoch (0, 1, ...) as a pure function of it, equal to
// what PyTorch 1.13's schedulers give when stepped once per epoch (the lr read before the epoch's
// scheduler.step()). Each schedule is one named function; Schedule picks one and adds the warm-up.
#pragma once

namespace engine {

// CosineAnnealingLR(T_max, eta_min): eta_min + (base_lr - eta_min) (1 + cos(pi epoch / t_max)) / 2.
// PyTorch computes it recursively from the previous epoch's lr; stepped from epoch 0 that recursion is
// this closed form for every epoch, also past t_max, where it rises again: periodic with period 2 t_max
// (eta_min at t_max, 3 t_max, ...; base_lr at 2 t_max, ...). Checked against PyTorch up to 3 t_max.
double cosine_lr(double base_lr, double eta_min, int t_max, int epoch);

// StepLR(step_size, gamma): base_lr gamma^(epoch / step_size), integer division.
double step_lr(double base_lr, double gamma, int step_size, int epoch);

// Linear warm-up over the first `warmup_epochs` epochs: base_lr (epoch + 1) / warmup_epochs, reaching
// base_lr at epoch warmup_epochs - 1 (and base_lr after). It is PyTorch's
// LinearLR(start_factor=1/W, end_factor=1, total_iters=W-1): its factor 1/W + (1 - 1/W) e / (W - 1) = (e + 1) / W.
double warmup_lr(double base_lr, int warmup_epochs, int epoch);

enum class ScheduleKind { constant, cosine, step };

// The warm-up, then the schedule `kind` started afresh: epoch e >= warmup_epochs gets the lr of epoch
// e - warmup_epochs of the schedule, as PyTorch's SequentialLR([LinearLR, schedule], milestones=[W]).
// Without warm-up (warmup_epochs 0) it is the schedule itself.
struct Schedule {
  ScheduleKind kind = ScheduleKind::constant;
  float base_lr = 0.1f;
  int t_max = 0;          // cosine: half period, in epochs
  float eta_min = 0.f;    // cosine: the lowest lr
  int step_size = 0;      // step: epochs between decays
  float gamma = 0.1f;     // step: decay factor
  int warmup_epochs = 0;

  float lr_at(int epoch) const;
};

}  // namespace engine
