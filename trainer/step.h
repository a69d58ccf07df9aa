// What ./train, its QAT modes and `make bench` share: the optimizer of a model, one training step, and
// the evaluation pass.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "datasets/loader.h"
#include "engine/optim.h"
#include "engine/reducer.h"
#include "models/repvgg.h"

namespace train {

// SGD over the model's parameters in three groups: plain L2 weight decay `wd` on every parameter, except
// those RepVGG's custom L2 covers (when `custom_l2`; decayed through the loss instead) and the quantizers'
// steps (never decayed, as LSQ). `names` lists the parameters in the optimizer's order (its momentum
// buffers' order). Build it after RepVGG::set_qat: it holds the parameter tensors it is given.
struct Optimizer {
  engine::SGD sgd;
  std::vector<std::string> names;
};
Optimizer make_optimizer(const models::Model& model, float lr, float momentum, bool nesterov, float wd, bool custom_l2);

// Of the global batch (all ranks' shards, when distributed).
// Data-parallel training: every parameter and buffer from rank 0, as torch DDP does at its start (the
// ranks start equal whatever each initialized or loaded); and the gradient averaging of a run, over
// every parameter and the BN running statistics (engine/reducer.h).
void broadcast_state(const models::Model& model);
std::unique_ptr<engine::GradReducer> make_reducer(const models::Model& model, float bucket_mb);

// Knowledge distillation (Hinton et al. 2015, ./train --distill): a full-precision teacher's logits as soft
// targets. The step's loss is (1 − w) CE + w · engine::distillation_loss(student, teacher, T), the teacher run
// in eval without gradients on the same batch (under mpirun, each rank on its shard).
struct Distillation {
  models::Model* teacher = nullptr;
  float temperature = 4, weight = 0.5;  // T, w
};

struct StepResult {
  float loss = 0;       // the cross-entropy of the batch (without the custom L2 and the distillation term)
  int64_t correct = 0;  // top-1 hits
  int64_t images = 0;
  bool stepped = false; // false when the loss was not finite (on some rank): no update was made
  bool interrupted = false;  // some rank was interrupted (Ctrl-C)
};
// Forward, cross-entropy (plus wd/2 · RepVGG's custom L2 when custom_l2_wd > 0), backward, SGD step.
// Distributed (reducer given): the ranks first agree on the batch's loss, hits and the stop flags (a
// non-finite loss anywhere stops all, before any starts the gradients' all-reduce), then the backward
// hands each gradient to the reducer, which averages them over the ranks before the SGD step.
StepResult train_step(models::Model& model, engine::SGD& sgd, const engine::Tensor& x, const engine::Tensor& labels,
                      float label_smoothing, float custom_l2_wd, engine::GradReducer* reducer = nullptr,
                      bool interrupted = false, const Distillation* distill = nullptr);

struct EvalResult {
  double loss = 0, top1 = 0, top5 = 0;  // top-5 is 0 with fewer than 5 classes
  size_t images = 0;
};
// The model in eval mode over one pass of `loader` (then back in the mode it was in), without gradients;
// distributed, each rank evaluates its shard and the sums are all-reduced (every rank gets the result).
EvalResult evaluate(models::Model& model, data::Loader& loader, engine::Device device);

}  // namespace train
