// Integer inference kernels on the CPU (quant/int8_runtime.h runs a model on them): oneDNN convolutions of
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
// Each QConv is built once for its shape: the primitive, the weights reordered into its layout, its
// scratchpad (shared, dnnl.h). run() creates nothing and allocates nothing.
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
  const std::string& impl() const { return impl_; }  // oneDNN's implementation name, e.g. "brgconv:avx512_core_vnni"
  const QConvSpec& spec() const { return q_; }

 private:
  QConvSpec q_;
  std::unique_ptr<DnnlCall> call_;
  Tensor weight_, bias_;  // the weights in the primitive's layout, the bias
  std::string impl_;
};

// y = clamp(round(x / s) + z, 0, q_max) for n values (any layout): an activation's codes, as the fake
// quantizer computes them (x / s, round half to even).
void quantize_u8(const float* x, uint8_t* y, int64_t n, float s, int z, int q_max);
// x [N, HW, C] (NHWC) -> y [N, C], the mean over HW.
void avg_pool_nhwc(int64_t n, int64_t hw, int64_t c, const float* x, float* y);

}  // namespace engine::cpu
