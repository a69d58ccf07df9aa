#include "engine/autograd.h"

#include <unordered_map>
#include <unordered_set>

#include "engine/ops.h"

namespace engine {

static thread_local bool g_grad_enabled = true;

NoGradGuard::NoGradGuard() : previous(g_grad_enabled) { g_grad_enabled = false; }
NoGradGuard::~NoGradGuard() { g_grad_enabled = previous; }

bool any_requires_grad(std::initializer_list<Tensor> inputs) {
  if (!g_grad_enabled) return false;
  for (const Tensor& t : inputs)
    if (t.defined() && t.requires_grad()) return true;
  return false;
}

void record(Tensor& out, const char* name, std::vector<Tensor> inputs, BackwardFn backward) {
  if (!g_grad_enabled) return;
  bool needed = false;
  for (const Tensor& t : inputs) needed |= t.defined() && t.requires_grad();
  if (!needed) return;
  out.impl()->requires_grad = true;
  out.impl()->grad_fn = std::make_shared<Node>(Node{name, std::move(inputs), std::move(backward)});
}

void accumulate_grad(const Tensor& t, const Tensor& g_in) {
  if (!t.defined() || !t.requires_grad()) return;
  ENGINE_CHECK(g_in.shape() == t.shape(), "gradient shape " + g_in.shape().str() + " for tensor " + t.shape().str());
  // A gradient is kept in its tensor's layout (ops.h, the activation layout), so that backward functions
  // read gout as they wrote out.
  const Tensor g = g_in.channel_block() == t.channel_block() ? g_in : to_layout(g_in, t.channel_block());
  TensorImpl* impl = t.impl();
  if (!impl->grad) {
    // A leaf keeps a private buffer (optimizers update it in place); an interior tensor may share g.
    impl->grad = t.is_leaf() ? g.clone().impl_ptr() : g.impl_ptr();
  } else if (t.is_leaf()) {
    add_(Tensor(impl->grad), g);
  } else {
    impl->grad = add(Tensor(impl->grad), g).impl_ptr();
  }
}

// Depth-first post-order over the tensors that have a grad_fn: each tensor after all of its inputs.
static void topo_sort(const Tensor& root, std::vector<Tensor>& order) {
  std::unordered_set<TensorImpl*> seen;
  std::vector<std::pair<Tensor, size_t>> stack{{root, 0}};
  seen.insert(root.impl());
  while (!stack.empty()) {
    auto& [t, next] = stack.back();
    const auto& inputs = t.grad_fn()->inputs;
    if (next < inputs.size()) {
      const Tensor& in = inputs[next++];
      if (in.defined() && in.grad_fn() && seen.insert(in.impl()).second) stack.push_back({in, 0});
    } else {
      order.push_back(t);
      stack.pop_back();
    }
  }
}

void run_backward(const Tensor& root, const LeafReadyFn& on_leaf_ready) {
  ENGINE_CHECK(root.numel() == 1, "backward() needs a one-element tensor, got " + root.shape().str());
  ENGINE_CHECK(root.requires_grad(), "backward() on a tensor that does not require grad");
  NoGradGuard no_grad;  // the backward closures compute with plain ops
  if (root.is_leaf()) {
    accumulate_grad(root, Tensor::full(root.shape(), 1.0f, root.device()));
    if (on_leaf_ready) on_leaf_ready(root.impl());
    return;
  }
  std::vector<Tensor> order;
  topo_sort(root, order);
  // For the hook: how many nodes still to run have each leaf as an input.
  std::unordered_map<const TensorImpl*, int> uses;
  auto leaf_inputs = [](const Tensor& t, auto&& f) {
    for (const Tensor& in : t.grad_fn()->inputs)
      if (in.defined() && in.is_leaf() && in.requires_grad()) f(in.impl());
  };
  if (on_leaf_ready)
    for (const Tensor& t : order) leaf_inputs(t, [&](const TensorImpl* l) { uses[l]++; });
  root.impl()->grad = Tensor::full(root.shape(), 1.0f, root.device()).impl_ptr();
  for (auto it = order.rbegin(); it != order.rend(); ++it) {
    const Tensor& t = *it;
    if (t.impl()->grad) {  // else no path from the root reached it
      Tensor gout(t.impl()->grad);
      t.impl()->grad.reset();  // interior gradients are not kept
      t.grad_fn()->backward(t, gout);
    }
    if (on_leaf_ready)
      leaf_inputs(t, [&](const TensorImpl* l) {
        if (--uses[l] == 0) on_leaf_ready(l);
      });
  }
}

void Tensor::backward() const { run_backward(*this); }

}  // namespace engine
