// Shape ops: reshape and flatten (views of the same storage), zero padding, detach.
#include "engine/autograd.h"
#include "engine/kernels.h"
#include "engine/ops.h"

namespace engine {

Tensor reshape(const Tensor& x, const Shape& shape) {
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

// x [..., H, W] -> [..., H + 2p, W + 2p]; the backward crops.
Tensor pad2d(const Tensor& x, int pad) {
  ENGINE_CHECK(x.dim() >= 2 && pad >= 0, "pad2d of " + x.shape().str());
  ENGINE_CHECK(x.device() == Device::cpu, "pad2d runs on the CPU (small kernels only)");
  const int64_t h = x.size(-2), w = x.size(-1), ph = h + 2 * pad, pw = w + 2 * pad;
  const int64_t planes = x.numel() / std::max<int64_t>(h * w, 1);
  Shape out = x.shape();
  out[-2] = ph;
  out[-1] = pw;
  Tensor y = Tensor::zeros(out);
  const float* src = x.f32();
  float* dst = y.f32();
  for (int64_t p = 0; p < planes; p++)
    for (int64_t i = 0; i < h; i++)
      for (int64_t j = 0; j < w; j++) dst[(p * ph + i + pad) * pw + j + pad] = src[(p * h + i) * w + j];
  record(y, "pad2d", {x}, [=](const Tensor& o, const Tensor& g) {
    const Tensor& x = o.grad_fn()->inputs[0];
    Tensor gx = Tensor::empty(x.shape());
    const float* gs = g.f32();
    float* gd = gx.f32();
    for (int64_t p = 0; p < planes; p++)
      for (int64_t i = 0; i < h; i++)
        for (int64_t j = 0; j < w; j++) gd[(p * h + i) * w + j] = gs[(p * ph + i + pad) * pw + j + pad];
    accumulate_grad(x, gx);
  });
  return y;
}

}  // namespace engine
