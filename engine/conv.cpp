// 2-D convolution (cross-correlation, as torch.nn.functional.conv2d) with stride, zero padding and groups,
// and its gradients. Kernels: engine/cpu/conv.cpp (oneDNN), engine/cuda/conv.cu (cuDNN).
#include "engine/autograd.h"
#include "engine/kernels.h"
#include "engine/ops.h"

namespace engine {

// The layouts of a CPU convolution (ops.h, the activation layout): y blocked by activation_block() B
// when O, and each group's channels, are multiples of B; x then in y's layout (an image of fewer channels
// than B stays NCHW, as oneDNN takes it). Else both NCHW. CUDA: NCHW.
static int64_t output_block(const Tensor& x, const Tensor& w, int groups) {
  const int64_t b = x.device() == Device::cpu ? activation_block() : 0;
  if (b == 0 || x.dim() != 4 || w.dim() != 4 || groups < 1) return 0;
  const int64_t c = x.size(1), o = w.size(0);
  if (o % (b * groups) != 0) return 0;
  if (c % (b * groups) == 0 || (groups == 1 && c < b)) return b;
  return 0;
}

static Tensor input_in_layout(const Tensor& x, int64_t y_block) {
  return y_block && x.size(1) % y_block == 0 ? to_layout(x, y_block) : to_plain(x);
}

// x [N, C, H, W], w [O, C/groups, kh, kw], bias [O] or undefined -> y [N, O, OH, OW],
// OH = (H + 2 padding.h - kh) / stride + 1 (rounded down), OW likewise.
static ConvShape conv_shape(const Tensor& x, const Tensor& w, const Tensor& bias, int stride, Padding padding,
                            int groups, int64_t y_block) {
  ENGINE_CHECK(x.dim() == 4, "x must be [N, C, H, W], got " + x.shape().str());
  ENGINE_CHECK(w.dim() == 4, "weight must be [O, C/groups, kh, kw], got " + w.shape().str());
  const std::string pad = std::to_string(padding.h) + "x" + std::to_string(padding.w);
  ENGINE_CHECK(stride >= 1 && padding.h >= 0 && padding.w >= 0 && groups >= 1,
               "stride " + std::to_string(stride) + ", padding " + pad + ", groups " + std::to_string(groups));
  ConvShape s{x.size(0), x.size(1), x.size(2), x.size(3), w.size(0), w.size(2), w.size(3), 0, 0,
              stride, padding.h, padding.w, groups, bias.defined(), x.channel_block(), y_block};
  std::string what = "x " + x.shape().str() + ", weight " + w.shape().str() + ", groups " + std::to_string(groups);
  ENGINE_CHECK(s.c % groups == 0 && s.o % groups == 0,
               "channels not divisible by groups: " + what);
  ENGINE_CHECK(w.size(1) == s.c / groups, "weight must be [O, C/groups, kh, kw]: " + what);
  ENGINE_CHECK(s.h + 2 * s.ph >= s.kh && s.w + 2 * s.pw >= s.kw,
               "kernel larger than the padded input: " + what + ", padding " + pad);
  ENGINE_CHECK(!bias.defined() || bias.shape() == Shape{s.o},
               "bias must be [" + std::to_string(s.o) + "], got " + bias.shape().str());
  ENGINE_CHECK(w.device() == x.device() && (!bias.defined() || bias.device() == x.device()),
               "x, weight and bias on different devices");
  s.oh = (s.h + 2 * s.ph - s.kh) / stride + 1;
  s.ow = (s.w + 2 * s.pw - s.kw) / stride + 1;
  return s;
}

// The convolution's input in the layout it runs in (output_block), and its shape.
struct ConvInput {
  Tensor x;
  ConvShape s;
};
static ConvInput conv_input(const Tensor& input, const Tensor& w, const Tensor& bias, int stride, Padding padding,
                            int groups) {
  const int64_t y_block = output_block(input, w, groups);
  const Tensor x = input.dim() == 4 ? input_in_layout(input, y_block) : input;
  return {x, conv_shape(x, w, bias, stride, padding, groups, y_block)};
}

// w's storage where it is frozen (a constant for inference: the kernels keep its forms), else null.
static Storage* frozen_storage(const Tensor& w) { return w.frozen() ? w.impl()->storage.get() : nullptr; }

static Tensor conv_output(const Tensor& x, const ConvShape& s) {
  Tensor y = Tensor::empty({s.n, s.o, s.oh, s.ow}, DType::f32, x.device());
  y.impl()->channel_block = s.y_block;
  return y;
}

Tensor conv2d(const Tensor& input, const Tensor& w, const Tensor& bias, int stride, Padding padding, int groups) {
  const ConvInput in = conv_input(input, w, bias, stride, padding, groups);
  const Tensor& x = in.x;
  const ConvShape s = in.s;
  Tensor y = conv_output(x, s);
  DISPATCH(x.device(), conv2d_forward, s, x.storage_f32(), w.f32(), s.bias ? bias.f32() : nullptr, y.storage_f32(),
           frozen_storage(w));
  record(y, "conv2d", {x, w, bias}, [s](const Tensor& out, const Tensor& gy) {
    const Tensor &x = out.grad_fn()->inputs[0], &w = out.grad_fn()->inputs[1], &b = out.grad_fn()->inputs[2];
    if (x.requires_grad()) {
      Tensor gx = empty_like(x);
      DISPATCH(x.device(), conv2d_backward_data, s, gy.storage_f32(), w.f32(), gx.storage_f32());
      accumulate_grad(x, gx);
    }
    bool need_gb = b.defined() && b.requires_grad();
    if (w.requires_grad() || need_gb) {
      ConvShape sw = s;
      sw.bias = need_gb;
      Tensor gw = Tensor::empty(w.shape(), DType::f32, x.device());  // computed with gb even for a frozen w
      Tensor gb = need_gb ? Tensor::empty(b.shape(), DType::f32, x.device()) : Tensor();
      DISPATCH(x.device(), conv2d_backward_weight, sw, x.storage_f32(), gy.storage_f32(), gw.f32(), need_gb ? gb.f32() : nullptr);
      accumulate_grad(w, gw);
      accumulate_grad(b, gb);
    }
  });
  return y;
}

// relu(conv2d(...)): without a gradient to record, one call; with one, the composition.
Tensor conv2d_relu(const Tensor& input, const Tensor& w, const Tensor& bias, int stride, Padding padding, int groups) {
  if (any_requires_grad({input, w, bias})) return relu(conv2d(input, w, bias, stride, padding, groups));
  const ConvInput in = conv_input(input, w, bias, stride, padding, groups);
  const Tensor& x = in.x;
  const ConvShape& s = in.s;
  Tensor y = conv_output(x, s);
  DISPATCH(x.device(), conv2d_relu_forward, s, x.storage_f32(), w.f32(), s.bias ? bias.f32() : nullptr,
           y.storage_f32(), frozen_storage(w));
  return y;
}

}  // namespace engine
