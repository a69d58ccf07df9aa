// Shape ops: reshape and flatten (views of the same storage), zero padding, detach, select.
#include "engine/autograd.h"
#include "engine/kernels.h"
#include "engine/ops.h"

namespace engine {

Tensor reshape(const Tensor& x_in, const Shape& shape) {
  const Tensor x = to_plain(x_in);
  Tensor y = view_as_shape(x, shape);
  Shape in_shape = x.shape();
  record(y, "reshape", {x}, [in_shape](const Tensor& out, const Tensor& g) {
    accumulate_grad(out.grad_fn()->inputs[0], view_as_shape(g, in_shape));
  });
  return y;
}

Tensor flatten(const Tensor& x) {
  ENGINE_CHECK(x.dim() >= 1, "flatten of a scalar");
  return reshape(x, Shape{x.size(0), x.numel() / std::max<int64_t>(x.size(0), 1)});
}

Tensor detach(const Tensor& x) { return x.detach(); }

// x [R, ...] -> x[i] [...]; the backward writes the gradient into row i of zeros.
Tensor select(const Tensor& x_in, int64_t i) {
  const Tensor x = to_plain(x_in);
  ENGINE_CHECK(x.dim() >= 1 && i >= 0 && i < x.size(0) && x.dtype() == DType::f32,
               "select of row " + std::to_string(i) + " of " + x.str());
  Shape row;
  for (int d = 1; d < x.dim(); d++) row.d[row.n++] = x.size(d);
  const int64_t n = row.numel();
  Tensor y = Tensor::empty(row, DType::f32, x.device());
  copy_bytes(x.device(), y.f32(), x.f32() + i * n, n * sizeof(float));
  record(y, "select", {x}, [i, n](const Tensor& out, const Tensor& g) {
    const Tensor& x = out.grad_fn()->inputs[0];
    Tensor gx = Tensor::zeros(x.shape(), DType::f32, x.device());
    copy_bytes(x.device(), gx.f32() + i * n, g.f32(), n * sizeof(float));
    accumulate_grad(x, gx);
  });
  return y;
}

// x [..., H, W] -> [..., H + 2 pad_h, W + 2 pad_w]; the backward crops.
Tensor pad2d(const Tensor& x_in, int pad_h, int pad_w) {
  const Tensor x = to_plain(x_in);
  ENGINE_CHECK(x.dim() >= 2 && pad_h >= 0 && pad_w >= 0,
               "pad2d of " + x.shape().str() + " by " + std::to_string(pad_h) + ", " + std::to_string(pad_w));
  const int64_t h = x.size(-2), w = x.size(-1);
  const int64_t planes = x.numel() / std::max<int64_t>(h * w, 1);
  Shape out = x.shape();
  out[-2] = h + 2 * pad_h;
  out[-1] = w + 2 * pad_w;
  Tensor y = Tensor::empty(out, DType::f32, x.device());
  DISPATCH(x.device(), pad2d_forward, planes, h, w, pad_h, pad_w, x.f32(), y.f32());
  record(y, "pad2d", {x}, [=](const Tensor& o, const Tensor& g) {
    const Tensor& x = o.grad_fn()->inputs[0];
    Tensor gx = Tensor::empty(x.shape(), DType::f32, x.device());
    DISPATCH(x.device(), pad2d_backward, planes, h, w, pad_h, pad_w, g.f32(), gx.f32());
    accumulate_grad(x, gx);
  });
  return y;
}

}  // namespace engine
