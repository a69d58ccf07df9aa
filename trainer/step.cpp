#include "trainer/step.h"

#include <cmath>

#include "engine/autograd.h"
#include "engine/dist.h"
#include "engine/ops.h"

namespace train {

using engine::Tensor;

Optimizer make_optimizer(const models::Model& model, float lr, float momentum, bool nesterov, float wd, bool custom_l2) {
  std::vector<engine::ParamGroup> groups(3);  // decayed; covered by the custom L2; steps
  std::vector<std::string> names[3];
  groups[0].weight_decay = wd;
  groups[2].positive = true;  // steps stay positive (layers/quantizer.h)
  for (const layers::Param& p : model.parameters()) {
    const int g = p.kind == layers::ParamKind::step ? 2 : custom_l2 && models::covered_by_custom_l2(p.name) ? 1 : 0;
    groups[g].params.push_back(p.tensor);
    names[g].push_back(p.name);
  }
  std::vector<std::string> all;
  for (auto& n : names) all.insert(all.end(), n.begin(), n.end());
  return {engine::SGD(groups, lr, momentum, nesterov), all};
}

// A CUDA tensor goes through a host copy: MPI is not told about device memory (Open MPI may not be built
// CUDA-aware). Once at the start (and once after QAT's first step): not worth an NCCL path of its own.
void broadcast_state(const models::Model& model) {
  for (const layers::NamedTensor& t : model.state_dict()) {
    if (t.tensor.device() == engine::Device::cpu) {
      dist::broadcast(t.tensor.raw(), t.tensor.nbytes());
      continue;
    }
    if (!dist::distributed()) continue;
    Tensor host = t.tensor.to(engine::Device::cpu);
    dist::broadcast(host.raw(), host.nbytes());
    Tensor(t.tensor).copy_(host);  // a handle: the model's storage
  }
}

std::unique_ptr<engine::GradReducer> make_reducer(const models::Model& model, float bucket_mb) {
  std::vector<Tensor> params, stats;
  for (const layers::Param& p : model.parameters()) params.push_back(p.tensor);
  auto ends_with = [](const std::string& s, const std::string& tail) {
    return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
  };
  for (const layers::NamedTensor& b : model.buffers())
    if (ends_with(b.name, ".running_mean") || ends_with(b.name, ".running_var")) stats.push_back(b.tensor);
  return std::make_unique<engine::GradReducer>(params, stats, size_t(double(bucket_mb) * (1 << 20)));
}

StepResult train_step(models::Model& model, engine::SGD& sgd, const Tensor& x, const Tensor& labels,
                      float label_smoothing, float custom_l2_wd, engine::GradReducer* reducer, bool interrupted,
                      const Distillation* distill) {
  Tensor logits = model(x);
  Tensor ce = engine::cross_entropy(logits, labels, label_smoothing);
  Tensor objective = ce;
  if (distill) {
    Tensor soft_targets;
    {
      engine::NoGradGuard no_grad;
      soft_targets = distill->teacher->forward(x);
    }
    const Tensor kd = engine::distillation_loss(logits, soft_targets, distill->temperature);
    objective = engine::add(engine::mul_scalar(ce, 1 - distill->weight), engine::mul_scalar(kd, distill->weight));
  }
  StepResult r;
  r.loss = ce.item();
  r.correct = engine::topk_correct(logits, labels, 1);
  r.images = x.size(0);
  r.interrupted = interrupted;
  bool finite = std::isfinite(r.loss) && std::isfinite(objective.item());
  if (reducer) {
    double t[5] = {double(r.loss) * double(r.images), double(r.correct), double(r.images), finite ? 0.0 : 1.0,
                   interrupted ? 1.0 : 0.0};
    dist::allreduce_sum(t, 5);
    r.loss = float(t[0] / t[2]);
    r.correct = int64_t(t[1]);
    r.images = int64_t(t[2]);
    finite = t[3] == 0;
    r.interrupted = t[4] > 0;
  }
  if (!finite) return r;
  Tensor loss = custom_l2_wd > 0 ? engine::add(objective, engine::mul_scalar(models::custom_l2(model), custom_l2_wd / 2)) : objective;
  sgd.zero_grad();
  if (reducer) {
    reducer->begin();
    engine::run_backward(loss, [reducer](const engine::TensorImpl* leaf) { reducer->ready(leaf); });
    reducer->finish();
  } else {
    loss.backward();
  }
  sgd.step();
  r.stepped = true;
  return r;
}

EvalResult evaluate(models::Model& model, data::Loader& loader, engine::Device device) {
  engine::NoGradGuard no_grad;
  const bool was_training = model.training();
  model.eval();
  loader.start_epoch(0);
  EvalResult r;
  double loss = 0, top1 = 0, top5 = 0;
  Tensor x, y;
  while (const data::Batch* b = loader.next()) {
    if (b->n == 0) continue;  // a shard's batch of bad images only (--bad-images skip)
    data::to_tensors(*b, device, x, y);
    Tensor logits = model(x);
    loss += engine::cross_entropy(logits, y).item() * b->n;
    top1 += engine::topk_correct(logits, y, 1);
    if (logits.size(1) >= 5) top5 += engine::topk_correct(logits, y, 5);
    r.images += b->n;
  }
  if (was_training) model.train();
  double sums[4] = {loss, top1, top5, double(r.images)};
  dist::allreduce_sum(sums, 4);
  loss = sums[0], top1 = sums[1], top5 = sums[2], r.images = size_t(sums[3]);
  if (r.images == 0) return r;
  const double n = (double)r.images;
  r.loss = loss / n;
  r.top1 = 100 * top1 / n;
  r.top5 = 100 * top5 / n;
  return r;
}

}  // namespace train
