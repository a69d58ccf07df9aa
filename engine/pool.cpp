// Max pooling, forward and backward side by side. Kernels: engine/cpu/pool.cpp, engine/cuda/pool.cu.
// A blocked x (ops.h, the activation layout) is pooled as it is stored, [N, C/B, H, W, B]: the windows are
// the same for the B channels of a plane, which the CPU kernel pools together, and y keeps the layout, so
// that ResNet's stem runs blocked from its convolution through the pooling into the next convolution with no
// reorder either way (converting would cost two passes over the stem's largest activation, forward and
// backward).
#include <cstdint>

#include "engine/autograd.h"
#include "engine/kernels.h"
#include "engine/ops.h"
#include "engine/scalar_math.h"

namespace engine {

// x [N, C, H, W] -> y [N, C, H', W'] in x's layout; indices [N, C, H', W'] i32 in y's layout (kept for the
// backward: each output's argmax within its plane).
Tensor max_pool2d(const Tensor& x, int kernel, int stride, int padding) {
  ENGINE_CHECK(x.defined() && x.dtype() == DType::f32 && x.dim() == 4,
               "x must be f32 [N, C, H, W], got " + (x.defined() ? x.str() : "undefined"));
  const std::string what = "kernel " + std::to_string(kernel) + ", stride " + std::to_string(stride) + ", padding " +
                           std::to_string(padding) + " on x " + x.str();
  ENGINE_CHECK(kernel >= 1 && stride >= 1 && padding >= 0 && 2 * padding <= kernel,
               "kernel >= 1, stride >= 1 and 0 <= padding <= kernel / 2 expected, got " + what);
  ENGINE_CHECK(x.size(2) + 2 * padding >= kernel && x.size(3) + 2 * padding >= kernel,
               "the window is larger than the padded input: " + what);
  ENGINE_CHECK(x.size(2) * x.size(3) <= INT32_MAX, "a plane of more than 2^31 values: " + what);
  PoolShape s{x.size(0), x.size(1), x.size(2), x.size(3), pool_out_size(x.size(2), kernel, stride, padding),
              pool_out_size(x.size(3), kernel, stride, padding), kernel, stride, padding, x.channel_block()};
  const Shape out{s.n, s.c, s.oh, s.ow};
  Tensor y = Tensor::empty(out, DType::f32, x.device());
  y.impl()->channel_block = s.block;
  const Tensor indices = any_requires_grad({x}) ? Tensor::empty(out, DType::i32, x.device()) : Tensor();
  DISPATCH(x.device(), max_pool_forward, s, x.storage_f32(), y.storage_f32(),
           indices.defined() ? indices.data<int32_t>() : nullptr);

  record(y, "max_pool2d", {x}, [s, indices](const Tensor& out, const Tensor& gy) {
    const Tensor& x = out.grad_fn()->inputs[0];
    Tensor gx = empty_like(x);
    DISPATCH(x.device(), max_pool_backward, s, indices.data<int32_t>(), gy.storage_f32(), gx.storage_f32());
    accumulate_grad(x, gx);
  });
  return y;
}

}  // namespace engine
