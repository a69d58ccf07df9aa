// SGD with momentum and parameter groups (see optim.h). Kernel: engine/cpu/optim.cpp.
#include "engine/optim.h"

#include <unordered_set>

#include "engine/kernels.h"

namespace engine {

SGD::SGD(std::vector<ParamGroup> groups, float lr, float momentum, bool nesterov)
    : groups_(std::move(groups)), momentum_(momentum), nesterov_(nesterov) {
  set_lr(lr);
  ENGINE_CHECK(momentum >= 0.f, "invalid momentum " + std::to_string(momentum));
  ENGINE_CHECK(!nesterov || momentum > 0.f, "Nesterov momentum requires a momentum > 0");
  std::unordered_set<TensorImpl*> seen;
  for (size_t gi = 0; gi < groups_.size(); gi++) {
    const ParamGroup& group = groups_[gi];
    std::string where = "group " + std::to_string(gi);
    ENGINE_CHECK(group.weight_decay >= 0.f, where + ": invalid weight decay " + std::to_string(group.weight_decay));
    for (size_t i = 0; i < group.params.size(); i++) {
      const Tensor& p = group.params[i];
      std::string what = where + ", parameter " + std::to_string(i);
      ENGINE_CHECK(p.defined(), what + " is undefined");
      ENGINE_CHECK(p.dtype() == DType::f32, what + " is " + p.str() + ", expected f32");
      ENGINE_CHECK(seen.insert(p.impl()).second, what + " appears more than once among the groups");
      ENGINE_CHECK(!p.frozen(), what + " is frozen (a constant for inference)");
    }
  }
  buffers_.resize(seen.size());
}

void SGD::set_lr(float lr) {
  ENGINE_CHECK(lr >= 0.f, "invalid learning rate " + std::to_string(lr));
  lr_ = lr;
}

void SGD::step() {
  size_t k = 0;  // index of the parameter (and its momentum buffer) across the groups
  for (const ParamGroup& group : groups_) {
    for (const Tensor& p : group.params) {
      Tensor& buf = buffers_[k++];
      Tensor g = p.grad();
      if (!g.defined()) continue;
      ENGINE_CHECK(!p.frozen(), "parameter " + p.str() + " is frozen (a constant for inference): no step updates it");
      ENGINE_CHECK(g.shape() == p.shape() && g.device() == p.device() && g.dtype() == DType::f32,
                   "gradient " + g.str() + " for parameter " + p.str());
      bool first = momentum_ > 0.f && !buf.defined();
      if (first) buf = Tensor::empty(p.shape(), DType::f32, p.device());  // sgd_update writes it whole
      if (buf.defined())
        ENGINE_CHECK(buf.shape() == p.shape() && buf.device() == p.device() && buf.dtype() == DType::f32,
                     "momentum buffer " + buf.str() + " for parameter " + p.str());
      float* b = momentum_ > 0.f ? buf.f32() : nullptr;
      DISPATCH(p.device(), sgd_update, p.f32(), g.f32(), b, p.numel(), lr_, momentum_, group.weight_decay,
               nesterov_, first, group.positive);
    }
  }
}

void SGD::zero_grad() {
  for (const ParamGroup& group : groups_)
    for (const Tensor& p : group.params)
      if (p.grad().defined()) p.grad().fill_(0.f);
}

}  // namespace engine
