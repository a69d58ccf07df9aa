#include "layers/module.h"

#include <algorithm>

namespace layers {

void Module::train(bool on) {
  training_ = on;
  for (auto& [name, child] : children_) child->train(on);
}

void Module::switch_to_deploy() {
  for (auto& [name, child] : children_) child->switch_to_deploy();
}

// f(prefix, module) on this module and, depth first, on every child; prefix ends with '.' unless empty.
template <class F> void Module::visit(const std::string& prefix, F&& f) const {
  f(prefix, *this);
  for (auto& [name, child] : children_) child->visit(prefix + name + ".", f);
}

std::vector<Param> Module::parameters() const {
  std::vector<Param> out;
  visit("", [&](const std::string& prefix, const Module& m) {
    for (auto& p : m.params_) out.push_back({prefix + p.name, p.tensor, p.kind});
  });
  return out;
}

std::vector<NamedTensor> Module::buffers() const {
  std::vector<NamedTensor> out;
  visit("", [&](const std::string& prefix, const Module& m) {
    for (auto& b : m.buffers_) out.push_back({prefix + b.name, b.tensor});
  });
  return out;
}

void Module::to(engine::Device device) {
  for (auto& [name, t] : state_dict()) {
    if (t.device() == device) continue;
    const bool frozen = t.frozen();
    t.impl()->storage = t.to(device).impl()->storage;
    t.impl()->storage->frozen = frozen;
  }
}

std::vector<NamedTensor> Module::state_dict() const {
  std::vector<NamedTensor> out;
  visit("", [&](const std::string& prefix, const Module& m) {
    for (auto& p : m.params_) out.push_back({prefix + p.name, p.tensor});
    for (auto& b : m.buffers_) out.push_back({prefix + b.name, b.tensor});
  });
  return out;
}

std::vector<std::pair<std::string, Module*>> Module::modules() {
  std::vector<std::pair<std::string, Module*>> out;
  visit("", [&](const std::string& prefix, const Module& m) {
    out.push_back({prefix.empty() ? prefix : prefix.substr(0, prefix.size() - 1), const_cast<Module*>(&m)});
  });
  return out;
}

void Module::freeze() {
  eval();
  for (auto& [name, t] : state_dict()) t.freeze_();
}

void Module::zero_grad() {
  for (auto& p : parameters()) p.tensor.set_grad(Tensor());
}

Tensor Module::register_parameter(const std::string& name, Tensor t, ParamKind kind) {
  t.requires_grad_(true);
  params_.push_back({name, t, kind});
  return t;
}

Tensor Module::register_buffer(const std::string& name, Tensor t) {
  buffers_.push_back({name, t});
  return t;
}

void Module::add_child(const std::string& name, std::shared_ptr<Module> m) {
  ENGINE_CHECK(m != nullptr, "child module '" + name + "' is null");
  for (auto& [n, c] : children_) ENGINE_CHECK(n != name, "a child module '" + name + "' exists already");
  m->train(training_);
  children_.push_back({name, std::move(m)});
}

void Module::remove_module(const std::string& name) {
  auto it = std::find_if(children_.begin(), children_.end(), [&](auto& c) { return c.first == name; });
  ENGINE_CHECK(it != children_.end(), "no child module '" + name + "'");
  children_.erase(it);
}

void Module::remove_parameter(const std::string& name) {
  auto it = std::find_if(params_.begin(), params_.end(), [&](auto& p) { return p.name == name; });
  ENGINE_CHECK(it != params_.end(), "no parameter '" + name + "'");
  params_.erase(it);
}

void Module::remove_buffer(const std::string& name) {
  auto it = std::find_if(buffers_.begin(), buffers_.end(), [&](auto& b) { return b.name == name; });
  ENGINE_CHECK(it != buffers_.end(), "no buffer '" + name + "'");
  buffers_.erase(it);
}

void Sequential::push_back(std::shared_ptr<Module> m) {
  register_module(std::to_string(items_.size()), m);
  items_.push_back(std::move(m));
}

Tensor Sequential::forward(const Tensor& x) {
  Tensor y = x;
  for (auto& m : items_) y = m->forward(y);
  return y;
}

}  // namespace layers
