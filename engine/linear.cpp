// Fully connected layer y = x wᵀ + b (as torch.nn.functional.linear) and its gradients.
// Kernels: engine/cpu/linear.cpp (oneDNN inner product).
#include "engine/autograd.h"
#include "engine/kernels.h"
#include "engine/ops.h"

namespace engine {

static float* data_or_null(const Tensor& t) { return t.defined() ? t.f32() : nullptr; }

// x [N, I], w [O, I], bias [O] or undefined -> y [N, O]
Tensor linear(const Tensor& x, const Tensor& w, const Tensor& bias) {
  ENGINE_CHECK(x.dim() == 2, "x must be [N, I], got " + x.shape().str());
  ENGINE_CHECK(w.dim() == 2 && w.size(1) == x.size(1),
               "weight must be [O, I] with I = " + std::to_string(x.size(1)) + ", got " + w.shape().str());
  ENGINE_CHECK(!bias.defined() || bias.shape() == Shape{w.size(0)},
               "bias must be [" + std::to_string(w.size(0)) + "], got " + bias.shape().str());
  ENGINE_CHECK(w.device() == x.device() && (!bias.defined() || bias.device() == x.device()),
               "x, weight and bias on different devices");
  LinearShape s{x.size(0), x.size(1), w.size(0), bias.defined()};
  Tensor y = Tensor::empty({s.n, s.o}, DType::f32, x.device());
  DISPATCH(x.device(), linear_forward, s, x.f32(), w.f32(), data_or_null(bias), y.f32());
  record(y, "linear", {x, w, bias}, [s](const Tensor& out, const Tensor& gy) {
    const Tensor &x = out.grad_fn()->inputs[0], &w = out.grad_fn()->inputs[1], &b = out.grad_fn()->inputs[2];
    // gx [N, I] = gy w, gw [O, I] = gyᵀ x, gb [O] = sum over N of gy
    Tensor gx = x.requires_grad() ? Tensor::empty(x.shape(), DType::f32, x.device()) : Tensor();
    Tensor gw = w.requires_grad() ? Tensor::empty(w.shape(), DType::f32, x.device()) : Tensor();
    Tensor gb = b.defined() && b.requires_grad() ? Tensor::empty(b.shape(), DType::f32, x.device()) : Tensor();
    DISPATCH(x.device(), linear_backward, s, x.f32(), w.f32(), gy.f32(), data_or_null(gx), data_or_null(gw),
             data_or_null(gb));
    accumulate_grad(x, gx);
    accumulate_grad(w, gw);
    accumulate_grad(b, gb);
  });
  return y;
}

}  // namespace engine
