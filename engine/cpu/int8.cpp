// Integer inference kernels (int8.h): a oneDNN int8 (or FP32) convolution with its epilogue fused, and
// the quantize and pooling loops.
#include "engine/cpu/int8.h"

#include <algorithm>
#include <cmath>

#include "engine/scalar_math.h"

namespace engine::cpu {

using dnnl::memory;
using tag = memory::format_tag;
using dt = memory::data_type;

static dt dnnl_type(DType d) {
  switch (d) {
    case DType::u8: return dt::u8;
    case DType::i8: return dt::s8;
    case DType::i32: return dt::s32;
    case DType::f32: return dt::f32;
  }
  fail("unknown dtype");
}

QConv::QConv(const QConvSpec& q, const void* weight, const void* bias) : q_(q) {
  const ConvShape& s = q.s;
  const bool integer = q.src == DType::u8;
  ENGINE_CHECK(integer || q.src == DType::f32, "src must be u8 or f32");
  ENGINE_CHECK(integer ? q.dst != DType::i8 : q.dst == DType::f32, "an FP32 layer has an f32 dst");
  ENGINE_CHECK(!integer || q.dst == DType::i32 || q.scales.size() == 1 || (int64_t)q.scales.size() == s.o,
               std::to_string(q.scales.size()) + " scales for " + std::to_string(s.o) + " channels");
  const dt w_type = integer ? dt::s8 : dt::f32, b_type = integer ? dt::s32 : dt::f32;
  const memory::dims x_dims = {s.n, s.c, s.h, s.w}, y_dims = {s.n, s.o, s.oh, s.ow};
  const memory::dims w_dims = s.groups == 1 ? memory::dims{s.o, s.c, s.kh, s.kw}
                                            : memory::dims{s.groups, s.o / s.groups, s.c / s.groups, s.kh, s.kw};
  const memory::desc x_plain(x_dims, dnnl_type(q.src), q.src_nchw ? tag::nchw : tag::nhwc);
  const memory::desc y_plain(y_dims, dnnl_type(q.dst), tag::nhwc);
  const memory::desc w_plain(w_dims, w_type, s.groups == 1 ? tag::oihw : tag::goihw);
  const memory::desc b_plain({s.o}, b_type, tag::x);

  dnnl::primitive_attr attr = dnnl_attr();
  if (integer && q.dst != DType::i32) attr.set_output_scales(q.scales.size() == 1 ? 0 : 1 << 1, q.scales);
  if (integer && q.src_zero_point != 0) attr.set_zero_points(DNNL_ARG_SRC, 0, {q.src_zero_point});
  dnnl::post_ops po;
  if (q.dst == DType::u8) po.append_eltwise(1.f, dnnl::algorithm::eltwise_clip, 0.f, (float)q.dst_max);
  else if (q.relu && q.dst == DType::f32) po.append_eltwise(1.f, dnnl::algorithm::eltwise_relu, 0.f, 0.f);
  attr.set_post_ops(po);

  const int64_t pad = (s.kh - 1) / 2;
  auto any = [](const memory::desc& d) { return memory::desc(d.dims(), d.data_type(), tag::any); };
  dnnl::convolution_forward::desc desc(dnnl::prop_kind::forward_inference, dnnl::algorithm::convolution_direct,
                                       any(x_plain), any(w_plain), b_plain, any(y_plain), {s.stride, s.stride},
                                       {pad, pad}, {pad, pad});
  dnnl::convolution_forward::primitive_desc pd(desc, attr, dnnl_engine());
  impl_ = pd.impl_info_str();

  // The weights into the primitive's layout once, here (a one-off reorder, not in dnnl_primitives_created's
  // count); the call then takes them as they are.
  const memory::desc w_want = pd.weights_desc();
  weight_ = Tensor::empty({(int64_t)w_want.get_size()}, DType::u8);
  dnnl::reorder::primitive_desc reorder_pd(dnnl_engine(), w_plain, dnnl_engine(), w_want);
  dnnl::memory from(w_plain, dnnl_engine(), const_cast<void*>(weight)), to(w_want, dnnl_engine(), weight_.raw());
  dnnl::stream stream(dnnl_engine());
  dnnl::reorder(reorder_pd).execute(stream, from, to);
  stream.wait();
  bias_ = Tensor::empty({(int64_t)b_plain.get_size()}, DType::u8);
  std::copy_n((const uint8_t*)bias, b_plain.get_size(), bias_.data<uint8_t>());

  call_ = std::make_unique<DnnlCall>(pd, std::vector<DnnlArg>{{DNNL_ARG_SRC, x_plain, false},
                                                              {DNNL_ARG_WEIGHTS, w_want, false},
                                                              {DNNL_ARG_BIAS, b_plain, false},
                                                              {DNNL_ARG_DST, y_plain, true}});
}

void QConv::run(const void* x, void* y) { call_->run({x, weight_.raw(), bias_.raw(), y}); }

void quantize_u8(const float* x, uint8_t* y, int64_t n, float s, int z, int q_max) {
  const float zf = (float)z, hi = (float)q_max;  // converted here, not in the loop, which then vectorizes
#pragma omp parallel for simd schedule(static) if (n > 32768)
  for (int64_t i = 0; i < n; i++) y[i] = (uint8_t)fake_quant_code(x[i], s, zf, 0.0f, hi);
}

void avg_pool_nhwc(int64_t n, int64_t hw, int64_t c, const float* x, float* y) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; i++) {
    float* yi = y + i * c;
    std::fill_n(yi, c, 0.0f);
    for (int64_t p = 0; p < hw; p++)
      for (int64_t k = 0; k < c; k++) yi[k] += x[(i * hw + p) * c + k];
    for (int64_t k = 0; k < c; k++) yi[k] /= (float)hw;
  }
}

}  // namespace engine::cpu
