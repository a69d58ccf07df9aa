// Reverse-mode autograd, define-by-run (as micrograd, with tensors). Each op that has an input requiring
// grad records a Node on its output: the inputs and a closure that, given the output and the gradient of
// the loss with respect to it, accumulates the gradients of the inputs. `loss.backward()` sorts the graph
// and runs the closures in reverse topological order; leaves accumulate into `.grad`.
#pragma once
#include <functional>
#include <vector>

#include "engine/tensor.h"

namespace engine {

// backward(out, gout): gout is d loss / d out (same shape as out). Call accumulate_grad for each input.
using BackwardFn = std::function<void(const Tensor& out, const Tensor& gout)>;

struct Node {
  const char* name;
  std::vector<Tensor> inputs;  // every tensor input of the op (those not requiring grad are skipped)
  BackwardFn backward;
};

// Evaluation without graph recording: `{ NoGradGuard g; model.forward(x); }`.
struct NoGradGuard {
  NoGradGuard();
  ~NoGradGuard();
  bool previous;
};

// Whether an op with these inputs must record a node.
bool any_requires_grad(std::initializer_list<Tensor> inputs);

// Records `out = op(inputs)` for backward when grad is enabled and some input requires grad.
void record(Tensor& out, const char* name, std::vector<Tensor> inputs, BackwardFn backward);

// Adds g to t's gradient (t.grad += g), if t requires grad. g must have t's shape (in either layout: it
// is kept in t's) and is not retained by a leaf (leaves copy or add into their own buffer, so optimizers may update it in place).
void accumulate_grad(const Tensor& t, const Tensor& g);

// Runs backward from `root` (one element) with d root / d root = 1. on_leaf_ready, when given, is called
// for each leaf that requires grad as soon as its gradient is final: after the last node that has it as
// an input has run (data-parallel training starts that gradient's all-reduce then, engine/reducer.h).
using LeafReadyFn = std::function<void(const TensorImpl* leaf)>;
void run_backward(const Tensor& root, const LeafReadyFn& on_leaf_ready = nullptr);

}  // namespace engine
