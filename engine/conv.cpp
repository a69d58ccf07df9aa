// 2-D convolution (cross-correlation, as torch.nn.functional.conv2d) with stride, zero padding and groups,
// and its gradients. Kernels: engine/cpu/conv.cpp (oneDNN).
#include "engine/autograd.h"
#include "engine/kernels.h"
#include "engine/ops.h"

namespace engine {

// x [N, C, H, W], w [O, C/groups, kh, kw], bias [O] or undefined -> y [N, O, OH, OW],
// OH = (H + 2 padding - kh) / stride + 1 (rounded down), OW likewise. Blocked: x [N, C/16, H, W, 16] ->
// y [N, O/16, OH, OW, 16]; blocked_out: a plain x to that y.
static ConvShape conv_shape(const Tensor& x, const Tensor& w, const Tensor& bias, int stride, int padding, int groups,
                            bool blocked_out) {
  const bool blocked = is_blocked(x);
  ENGINE_CHECK(x.dim() == 4 || (blocked && x.size(4) == kChannelBlock),
               "x must be [N, C, H, W] or blocked [N, C/16, H, W, 16], got " + x.shape().str());
  ENGINE_CHECK((!blocked && !blocked_out) || x.device() == Device::cpu, "the blocked layout is the CPU's, got x " + x.str());
  ENGINE_CHECK(w.dim() == 4, "weight must be [O, C/groups, kh, kw], got " + w.shape().str());
  ENGINE_CHECK(stride >= 1 && padding >= 0 && groups >= 1,
               "stride " + std::to_string(stride) + ", padding " + std::to_string(padding) + ", groups " +
                   std::to_string(groups));
  const int64_t c = blocked ? x.size(1) * kChannelBlock : x.size(1);
  ConvShape s{x.size(0), c, x.size(2), x.size(3), w.size(0), w.size(2), w.size(3), 0, 0,
              stride, padding, groups, bias.defined(), blocked, blocked_out && !blocked};
  std::string what = "x " + x.shape().str() + ", weight " + w.shape().str() + ", groups " + std::to_string(groups);
  ENGINE_CHECK(s.c % groups == 0 && s.o % groups == 0,
               "channels not divisible by groups: " + what);
  ENGINE_CHECK(w.size(1) == s.c / groups, "weight must be [O, C/groups, kh, kw]: " + what);
  ENGINE_CHECK(!(blocked || blocked_out) || s.o % kChannelBlock == 0, "blocked output needs O % 16 == 0: " + what);
  ENGINE_CHECK(s.h + 2 * padding >= s.kh && s.w + 2 * padding >= s.kw,
               "kernel larger than the padded input: " + what + ", padding " + std::to_string(padding));
  ENGINE_CHECK(!bias.defined() || bias.shape() == Shape{s.o},
               "bias must be [" + std::to_string(s.o) + "], got " + bias.shape().str());
  ENGINE_CHECK(w.device() == x.device() && (!bias.defined() || bias.device() == x.device()),
               "x, weight and bias on different devices");
  s.oh = (s.h + 2 * padding - s.kh) / stride + 1;
  s.ow = (s.w + 2 * padding - s.kw) / stride + 1;
  return s;
}

static Tensor conv_output(const Tensor& x, const ConvShape& s) {
  if (s.blocked || s.blocked_y)
    return Tensor::empty({s.n, s.o / kChannelBlock, s.oh, s.ow, kChannelBlock}, DType::f32, x.device());
  return Tensor::empty({s.n, s.o, s.oh, s.ow}, DType::f32, x.device());
}

Tensor conv2d(const Tensor& x, const Tensor& w, const Tensor& bias, int stride, int padding, int groups,
              bool blocked_out) {
  const ConvShape s = conv_shape(x, w, bias, stride, padding, groups, blocked_out);
  Tensor y = conv_output(x, s);
  DISPATCH(x.device(), conv2d_forward, s, x.f32(), w.f32(), s.bias ? bias.f32() : nullptr, y.f32());
  record(y, "conv2d", {x, w, bias}, [s](const Tensor& out, const Tensor& gy) {
    const Tensor &x = out.grad_fn()->inputs[0], &w = out.grad_fn()->inputs[1], &b = out.grad_fn()->inputs[2];
    if (x.requires_grad()) {
      Tensor gx = Tensor::empty(x.shape(), DType::f32, x.device());
      DISPATCH(x.device(), conv2d_backward_data, s, gy.f32(), w.f32(), gx.f32());
      accumulate_grad(x, gx);
    }
    bool need_gb = b.defined() && b.requires_grad();
    if (w.requires_grad() || need_gb) {
      ConvShape sw = s;
      sw.bias = need_gb;
      Tensor gw = Tensor::empty(w.shape(), DType::f32, x.device());  // computed with gb even for a frozen w
      Tensor gb = need_gb ? Tensor::empty(b.shape(), DType::f32, x.device()) : Tensor();
      DISPATCH(x.device(), conv2d_backward_weight, sw, x.f32(), gy.f32(), gw.f32(), need_gb ? gb.f32() : nullptr);
      accumulate_grad(w, gw);
      accumulate_grad(b, gb);
    }
  });
  return y;
}

// relu(conv2d(...)): without a gradient to record, one call; with one, the composition.
Tensor conv2d_relu(const Tensor& x, const Tensor& w, const Tensor& bias, int stride, int padding, int groups,
                   bool blocked_out) {
  if (any_requires_grad({x, w, bias})) return relu(conv2d(x, w, bias, stride, padding, groups, blocked_out));
  const ConvShape s = conv_shape(x, w, bias, stride, padding, groups, blocked_out);
  Tensor y = conv_output(x, s);
  DISPATCH(x.device(), conv2d_relu_forward, s, x.f32(), w.f32(), s.bias ? bias.f32() : nullptr, y.f32());
  return y;
}

}  // namespace engine
