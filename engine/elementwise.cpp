// Element-wise and broadcast ops: forward and backward side by side. Kernels: engine/cpu/elementwise.cpp.
#include "engine/autograd.h"
#include "engine/kernels.h"
#include "engine/ops.h"

namespace engine {

void Tensor::fill_(float value) {
  ENGINE_CHECK(!frozen(), "fill_ of " + str() + ", which is frozen (a constant for inference)");
  DISPATCH(device(), fill, storage_f32(), numel(), value);
}

// --- unary ---------------------------------------------------------------------------------------------

// Element-wise ops see the storage as it is: y, and gx, in x's layout.
static Tensor unary(UnaryOp op, const char* name, const Tensor& x, float p0 = 0.f, float p1 = 0.f) {
  Tensor y = empty_like(x);
  DISPATCH(x.device(), unary_forward, op, x.storage_f32(), y.storage_f32(), x.numel(), p0, p1);
  record(y, name, {x}, [op, p0, p1](const Tensor& out, const Tensor& gout) {
    const Tensor& x = out.grad_fn()->inputs[0];
    Tensor gx = empty_like(x);
    DISPATCH(x.device(), unary_backward, op, x.storage_f32(), out.storage_f32(), gout.storage_f32(), gx.storage_f32(), x.numel(), p0, p1);
    accumulate_grad(x, gx);
  });
  return y;
}

Tensor relu(const Tensor& x) { return unary(UnaryOp::relu, "relu", x); }
Tensor square(const Tensor& x) { return unary(UnaryOp::square, "square", x); }
Tensor sqrt(const Tensor& x) { return unary(UnaryOp::sqrt, "sqrt", x); }
Tensor rsqrt(const Tensor& x) { return unary(UnaryOp::rsqrt, "rsqrt", x); }
Tensor clamp(const Tensor& x, float lo, float hi) { return unary(UnaryOp::clamp, "clamp", x, lo, hi); }
Tensor round_ste(const Tensor& x) { return unary(UnaryOp::round, "round_ste", x); }
Tensor add_scalar(const Tensor& x, float s) { return unary(UnaryOp::add_scalar, "add_scalar", x, s); }
Tensor mul_scalar(const Tensor& x, float s) { return unary(UnaryOp::mul_scalar, "mul_scalar", x, s); }
Tensor sigmoid(const Tensor& x) { return unary(UnaryOp::sigmoid, "sigmoid", x); }
Tensor abs(const Tensor& x) { return unary(UnaryOp::abs, "abs", x); }
Tensor pow(const Tensor& x, float p) { return unary(UnaryOp::pow, "pow", x, p); }

// --- binary, broadcasting --------------------------------------------------------------------------------

// NumPy broadcasting of a and b: the output dims and each input's strides over them.
static Broadcast broadcast(const Shape& a, const Shape& b) {
  Broadcast r;
  r.n = std::max(a.n, b.n);
  int64_t stride_a = 1, stride_b = 1;
  for (int i = r.n - 1; i >= 0; i--) {
    int ia = i - (r.n - a.n), ib = i - (r.n - b.n);
    int64_t da = ia >= 0 ? a.d[ia] : 1, db = ib >= 0 ? b.d[ib] : 1;
    ENGINE_CHECK(da == db || da == 1 || db == 1, "shapes " + a.str() + " and " + b.str() + " do not broadcast");
    r.out[i] = std::max(da, db);
    r.sa[i] = da == 1 ? 0 : stride_a;
    r.sb[i] = db == 1 ? 0 : stride_b;
    stride_a *= da;
    stride_b *= db;
  }
  return r;
}

// Operands of one shape and one layout are added as stored, y in their layout; with a broadcast, both
// are NCHW (the callers convert: operands).
static Tensor binary_raw(BinaryOp op, const Tensor& a, const Tensor& b) {
  ENGINE_CHECK(a.device() == b.device(), "operands on " + a.str() + " and " + b.str());
  ENGINE_CHECK(a.channel_block() == b.channel_block() && (a.channel_block() == 0 || a.shape() == b.shape()),
               "operands " + a.str() + " and " + b.str() + " in different layouts");
  Broadcast bc = broadcast(a.shape(), b.shape());
  Shape out;
  out.n = bc.n;
  for (int i = 0; i < bc.n; i++) out.d[i] = bc.out[i];
  Tensor y = Tensor::empty(out, DType::f32, a.device());
  y.impl()->channel_block = a.channel_block();
  DISPATCH(a.device(), binary_forward, op, bc, a.storage_f32(), b.storage_f32(), y.storage_f32());
  return y;
}

// The operands of a binary op in layouts binary_raw takes: one shape, b in a's layout; else both NCHW.
static std::pair<Tensor, Tensor> operands(const Tensor& a, const Tensor& b) {
  if (a.channel_block() == b.channel_block() && (a.channel_block() == 0 || a.shape() == b.shape())) return {a, b};
  if (a.shape() == b.shape()) return {a, to_layout(b, a.channel_block())};
  return {to_plain(a), to_plain(b)};
}

Tensor add(const Tensor& a_in, const Tensor& b_in) {
  const auto [a, b] = operands(a_in, b_in);
  Tensor y = binary_raw(BinaryOp::add, a, b);
  record(y, "add", {a, b}, [](const Tensor& out, const Tensor& g) {
    const Tensor &a = out.grad_fn()->inputs[0], &b = out.grad_fn()->inputs[1];
    if (a.requires_grad()) accumulate_grad(a, sum_to(g, a.shape()));
    if (b.requires_grad()) accumulate_grad(b, sum_to(g, b.shape()));
  });
  return y;
}

Tensor sub(const Tensor& a_in, const Tensor& b_in) {
  const auto [a, b] = operands(a_in, b_in);
  Tensor y = binary_raw(BinaryOp::sub, a, b);
  record(y, "sub", {a, b}, [](const Tensor& out, const Tensor& g) {
    const Tensor &a = out.grad_fn()->inputs[0], &b = out.grad_fn()->inputs[1];
    if (a.requires_grad()) accumulate_grad(a, sum_to(g, a.shape()));
    if (b.requires_grad()) accumulate_grad(b, sum_to(mul_scalar(g, -1.f), b.shape()));
  });
  return y;
}

Tensor mul(const Tensor& a_in, const Tensor& b_in) {
  const auto [a, b] = operands(a_in, b_in);
  Tensor y = binary_raw(BinaryOp::mul, a, b);
  record(y, "mul", {a, b}, [](const Tensor& out, const Tensor& g) {
    const Tensor &a = out.grad_fn()->inputs[0], &b = out.grad_fn()->inputs[1];
    if (a.requires_grad()) accumulate_grad(a, sum_to(binary_raw(BinaryOp::mul, g, b), a.shape()));
    if (b.requires_grad()) accumulate_grad(b, sum_to(binary_raw(BinaryOp::mul, g, a), b.shape()));
  });
  return y;
}

Tensor div(const Tensor& a_in, const Tensor& b_in) {
  const auto [a, b] = operands(a_in, b_in);
  Tensor y = binary_raw(BinaryOp::div, a, b);
  record(y, "div", {a, b}, [](const Tensor& out, const Tensor& g) {
    const Tensor &a = out.grad_fn()->inputs[0], &b = out.grad_fn()->inputs[1];
    Tensor g_over_b = binary_raw(BinaryOp::div, g, b);
    if (a.requires_grad()) accumulate_grad(a, sum_to(g_over_b, a.shape()));
    // d(a/b)/db = -a/b² = -(a/b)/b = -out/b
    if (b.requires_grad())
      accumulate_grad(b, sum_to(mul_scalar(binary_raw(BinaryOp::mul, g_over_b, out), -1.f), b.shape()));
  });
  return y;
}

// --- in place, not recorded ----------------------------------------------------------------------------

void add_(const Tensor& a, const Tensor& b) { axpy_(a, 1.f, b); }

void axpy_(const Tensor& y, float alpha, const Tensor& x) {
  ENGINE_CHECK(y.shape() == x.shape(), x.shape().str() + " into " + y.shape().str());
  const Tensor xs = x.channel_block() == y.channel_block() ? x : to_layout(x, y.channel_block());
  DISPATCH(y.device(), axpy, y.storage_f32(), alpha, xs.storage_f32(), y.numel());
}

void scale_(const Tensor& x, float s) { DISPATCH(x.device(), scale, x.storage_f32(), s, x.numel()); }

}  // namespace engine
