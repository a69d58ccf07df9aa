// Integer inference kernels on the CPU (deploy/integer_model.h runs a model on them): oneDNN convolutions of
// u8 activation codes and s8 weight codes with s32 accumulation, the bias, the requantization scale and the
// ReLU fused into the primitive (output scales and an eltwise post-op), and the two loops around them.
//
//   QConv, u8 src:  acc[n, o, p] = Σ_{c, k} (x[n, c, p + k] − z) · w[o, c, k]   (s32; padding is the code z)
//                   dst u8:  y = clamp(round(scales[o] · (acc + b[o])), 0, dst_max)   (ReLU and code range)
//                   dst f32: y = scales[o] · (acc + b[o]), then max(0, y) when relu
//                   dst i32: y = acc + b[o] (scales 1; the raw accumulator, for tests)
//   QConv, f32 src: an FP32 layer, y = conv(x, w) + b, then max(0, y) when relu; dst f32
//
// x [N, C, H, W] as NHWC (or NCHW: src_nchw, the image), w [O, C/groups, kh, kw] (plain, as the file's),
// b [O] (s32 for u8 src, f32 for f32 src), y [N, O, OH, OW] as NHWC. NHWC is what oneDNN 2.6 picks for its
// int8 convolutions (brgconv, jit avx2/avx512 x8s8s32x) with any layout allowed: u8 activations stay in it
// from block to block with no reorder. Where an implementation wants another layout, DnnlCall reorders.
// oneDNN rounds to nearest even, as the fake quantizers do.
//
// Exactness. With VNNI (vpdpbusd) oneDNN sums the u8 x s8 products exactly in s32. Without it (AVX2, and
// AVX-512 before Cascade Lake) its kernels use vpmaddubsw, which adds two neighbouring products into a
// saturating s16: exact only while src_max · 2 · max|w| ≤ 32767 (7-bit activations, or weights in
// [−64, 64] under 8-bit ones). A layer beyond that runs the exact split instead (docs/int8.md):
//   x = 128 h + l, h = x >> 7 ∈ {0, 1}, l = x & 127:  acc = 128 · conv(h, w) + conv(l − z, w)
// two oneDNN s32 convolutions whose products cannot saturate (z only in the second: a padded tap reads 0
// in the first and the zero point in the second, 0 in all), then the epilogue in our loop, computed as
// oneDNN's: y = (float)acc + (float)b[o], times scales[o], ReLU/clip, rounded half to even.
//
// Each QConv is built once for its shape: the primitive, the weights reordered into its layout, its
// scratchpad (shared, dnnl.h), the split's buffers. run() creates nothing and allocates nothing.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "engine/cpu/dnnl.h"
#include "engine/kernels.h"
#include "engine/tensor.h"

namespace engine::cpu {

using engine::QConvSpec;  // engine/kernels.h

class QConv {
 public:
  // weight: s8 (u8 src) or f32 [O, C/groups, kh, kw]; bias: s32 or f32 [O]. Both copied.
  QConv(const QConvSpec& q, const void* weight, const void* bias);
  void run(const void* x, void* y);
  // oneDNN's implementation name, e.g. "brgconv:avx512_core_vnni", "jit_uni_int8:avx2+exact_split"
  const std::string& impl() const { return impl_; }
  const QConvSpec& spec() const { return q_; }
  bool split() const { return split_; }

 private:
  void run_split(const void* x, void* y);

  QConvSpec q_;
  std::unique_ptr<DnnlCall> call_, call_low_;  // the split: call_ on h, call_low_ on l (with the zero point)
  Tensor weight_, bias_;  // the weights in the primitive's layout, the bias
  Tensor weight_low_;     // the split with a zero point: the weights in call_low_'s layout
  Tensor high_, low_, acc_high_, acc_low_, zero_bias_;  // the split's buffers
  bool split_ = false;
  std::string impl_;
};

// Whether oneDNN's u8 x s8 products for src codes up to src_max and weight codes up to max_abs_w are summed
// exactly on this CPU in one convolution (see QConv): always with VNNI, else when they cannot saturate s16.
bool int8_single_conv_exact(int src_max, int max_abs_w);
// max |w| over n s8 weight codes (int8_single_conv_exact's max_abs_w).
int max_abs_code(const int8_t* w, int64_t n);

// y = clamp(round(x / s) + z, 0, q_max) for n values (any layout): an activation's codes, as the fake
// quantizer computes them (x / s, round half to even).
void quantize_u8(const float* x, uint8_t* y, int64_t n, float s, int z, int q_max);
// ResNet's shortcut add (deploy/integer_model.h): y = a + r, then max(0, y) where relu, for n values of one
// layout (NHWC). a: the conv's f32 output (its scales and bias applied); r: the shortcut, f32 (the downsample
// conv's output), or u8 codes, r = s_r (q − z_r) (the block's input as its first reader holds it).
void add_shortcut(const float* a, const float* r, float* y, int64_t n, bool relu);
void add_shortcut(const float* a, const uint8_t* r, float s_r, int z_r, float* y, int64_t n, bool relu);
// x [N, HW, C] (NHWC) -> y [N, C], the mean over HW.
void avg_pool_nhwc(int64_t n, int64_t hw, int64_t c, const float* x, float* y);
// x [N, H, W, C] (NHWC) -> y [N, H', W', C], H' = (H + 2p − k) / s + 1 (W' likewise): ops.h max_pool2d's
// values (p <= k / 2; the padding never the max). On u8 codes this is exact: the dequantization s (q − z) is
// monotone, so the max of the codes is the code of the max.
void max_pool_nhwc_u8(int64_t n, int64_t h, int64_t w, int64_t c, int k, int s, int p, const uint8_t* x, uint8_t* y);
void max_pool_nhwc_f32(int64_t n, int64_t h, int64_t w, int64_t c, int k, int s, int p, const float* x, float* y);

}  // namespace engine::cpu
