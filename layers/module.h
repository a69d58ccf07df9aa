// A small module system in the manner of torch.nn.Module: a module owns named parameters (leaf tensors
// with requires_grad), named buffers (running statistics) and named child modules, has a train/eval
// mode, and lists them recursively with PyTorch's dotted names ("stage1.0.rbr_dense.conv.weight").
#pragma once
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "engine/tensor.h"

namespace layers {

using engine::Tensor;

// What a parameter is: a conv or linear weight, a bias, a BN's gamma or beta, or a quantizer's step
// (layers/quantizer.h). Only `step` changes the training: the optimizer never decays steps
// (trainer/step.cpp); weights, biases and BN parameters alike get plain weight decay, unless the custom
// L2 covers them (models::covered_by_custom_l2, by name).
enum class ParamKind { weight, bias, bn, step };

struct Param {
  std::string name;
  Tensor tensor;
  ParamKind kind;
};

struct NamedTensor {
  std::string name;
  Tensor tensor;
};

class Module {
 public:
  virtual ~Module() = default;
  virtual Tensor forward(const Tensor& x) = 0;
  Tensor operator()(const Tensor& x) { return forward(x); }

  void train(bool on = true);  // this module and every one below it
  void eval() { train(false); }
  bool training() const { return training_; }

  // Replaces training-time branches by their inference-time equivalent (RepVGG blocks override it);
  // by default it asks the children.
  virtual void switch_to_deploy();

  // Recursive, in PyTorch's state-dict order: a module's own entries, then each child's.
  std::vector<Param> parameters() const;
  std::vector<NamedTensor> buffers() const;
  std::vector<NamedTensor> state_dict() const;  // parameters and buffers, interleaved per module
  // Every module below and including this one, with its dotted path ("" for this one).
  std::vector<std::pair<std::string, Module*>> modules();
  // Drops every parameter's gradient (set_to_none=True): the next backward allocates new ones. Not
  // SGD::zero_grad, which fills the optimizer's gradients with zeros and keeps their buffers.
  void zero_grad();
  // For inference from here on: eval mode, and every parameter and buffer a constant (Tensor::freeze_), so
  // that the kernels keep what they derive from the weights (each convolution's weights in its kernel's
  // layout) instead of remaking it on every call, as torch.jit.freeze does. Training it fails after this.
  void freeze();
  // Moves every parameter and buffer to `device` in place: the tensors' handles (held by optimizers and
  // by the blocks' fields) stay valid and see the new storage.
  void to(engine::Device device);

 protected:
  Tensor register_parameter(const std::string& name, Tensor t, ParamKind kind);  // sets requires_grad
  Tensor register_buffer(const std::string& name, Tensor t);
  template <class M> std::shared_ptr<M> register_module(const std::string& name, std::shared_ptr<M> m) {
    add_child(name, m);
    return m;
  }
  void remove_module(const std::string& name);
  // Drop an own parameter or buffer (a block whose branch tensors are its own, not a child's: OREPA).
  void remove_parameter(const std::string& name);
  void remove_buffer(const std::string& name);

 private:
  friend class LayerQuantizers;  // registers a layer's quantizers on its owner
  void add_child(const std::string& name, std::shared_ptr<Module> m);
  template <class F> void visit(const std::string& prefix, F&& f) const;

  bool training_ = true;
  std::vector<Param> params_;          // own, short names
  std::vector<NamedTensor> buffers_;   // own, short names
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> children_;
};

// Children named "0", "1", ... applied in order (torch.nn.Sequential).
class Sequential : public Module {
 public:
  void push_back(std::shared_ptr<Module> m);
  Tensor forward(const Tensor& x) override;
  size_t size() const { return items_.size(); }

 private:
  std::vector<std::shared_ptr<Module>> items_;
};

}  // namespace layers
