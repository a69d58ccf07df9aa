// Integer inference kernels (int8.h): a oneDNN int8 (or FP32) convolution with its epilogue fused, and
// the quantize and pooling loops.
#include "engine/cpu/int8.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <type_traits>

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

bool int8_single_conv_exact(int src_max, int max_abs_w) {
  return dnnl_has_vnni() || 2 * src_max * max_abs_w <= 32767;
}

int max_abs_code(const int8_t* w, int64_t n) {
  int m = 0;
  for (int64_t i = 0; i < n; i++) m = std::max(m, std::abs((int)w[i]));
  return m;
}

namespace {

struct QConvDescs {
  memory::desc x, w, b, y;
};

QConvDescs qconv_descs(const QConvSpec& q, dt dst) {
  const ConvShape& s = q.s;
  const bool integer = q.src == DType::u8;
  const dt w_type = integer ? dt::s8 : dt::f32, b_type = integer ? dt::s32 : dt::f32;
  const memory::dims x_dims = {s.n, s.c, s.h, s.w}, y_dims = {s.n, s.o, s.oh, s.ow};
  const memory::dims w_dims = s.groups == 1 ? memory::dims{s.o, s.c, s.kh, s.kw}
                                            : memory::dims{s.groups, s.o / s.groups, s.c / s.groups, s.kh, s.kw};
  return {memory::desc(x_dims, dnnl_type(q.src), q.src_nchw ? tag::nchw : tag::nhwc),
          memory::desc(w_dims, w_type, s.groups == 1 ? tag::oihw : tag::goihw), memory::desc({s.o}, b_type, tag::x),
          memory::desc(y_dims, dst, tag::nhwc)};
}

// An inference convolution of q's shape and layouts with this dst type, zero point and epilogue.
dnnl::convolution_forward::primitive_desc qconv_pd(const QConvSpec& q, dt dst, int zero_point, bool epilogue) {
  const QConvDescs d = qconv_descs(q, dst);
  const bool integer = q.src == DType::u8;
  dnnl::primitive_attr attr = dnnl_attr();
  if (epilogue && integer && q.dst != DType::i32) attr.set_output_scales(q.scales.size() == 1 ? 0 : 1 << 1, q.scales);
  if (integer && zero_point != 0) attr.set_zero_points(DNNL_ARG_SRC, 0, {zero_point});
  dnnl::post_ops po;
  if (epilogue && q.dst == DType::u8) po.append_eltwise(1.f, dnnl::algorithm::eltwise_clip, 0.f, (float)q.dst_max);
  else if (epilogue && q.relu && q.dst == DType::f32) po.append_eltwise(1.f, dnnl::algorithm::eltwise_relu, 0.f, 0.f);
  attr.set_post_ops(po);
  auto any = [](const memory::desc& m) { return memory::desc(m.dims(), m.data_type(), tag::any); };
  dnnl::convolution_forward::desc desc(dnnl::prop_kind::forward_inference, dnnl::algorithm::convolution_direct,
                                       any(d.x), any(d.w), d.b, any(d.y), {q.s.stride, q.s.stride}, {q.s.ph, q.s.pw},
                                       {q.s.ph, q.s.pw});
  dnnl::convolution_forward::primitive_desc pd(desc, attr, dnnl_engine());
  dnnl_note(pd);
  return pd;
}

}  // namespace

QConv::QConv(const QConvSpec& q, const void* weight, const void* bias) : q_(q) {
  const ConvShape& s = q.s;
  const bool integer = q.src == DType::u8;
  ENGINE_CHECK(integer || q.src == DType::f32, "src must be u8 or f32");
  ENGINE_CHECK(integer ? q.dst != DType::i8 : q.dst == DType::f32, "an FP32 layer has an f32 dst");
  ENGINE_CHECK(!integer || q.dst == DType::i32 || q.scales.size() == 1 || (int64_t)q.scales.size() == s.o,
               std::to_string(q.scales.size()) + " scales for " + std::to_string(s.o) + " channels");
  ENGINE_CHECK(!integer || (q.src_max >= 1 && q.src_max <= 255), "src_max " + std::to_string(q.src_max));
  if (integer) {
    const int max_abs_w = max_abs_code(static_cast<const int8_t*>(weight), s.o * (s.c / s.groups) * s.kh * s.kw);
    split_ = q.force_split || !int8_single_conv_exact(q.src_max, max_abs_w);
  }
  const QConvDescs d = qconv_descs(q, split_ ? dt::s32 : dnnl_type(q.dst));
  // the split: s32 out, no epilogue (ours); its first convolution has no zero point
  const auto pd = qconv_pd(q, split_ ? dt::s32 : dnnl_type(q.dst), split_ ? 0 : q.src_zero_point, !split_);
  impl_ = std::string(pd.impl_info_str()) + (split_ ? "+exact_split" : "");

  // The weights into the primitive's layout once, here (a one-off reorder, not in dnnl_primitives_created's
  // count); the call then takes them as they are.
  auto reordered = [&](const memory::desc& want) {
    Tensor t = Tensor::empty({(int64_t)want.get_size()}, DType::u8);
    dnnl::reorder::primitive_desc reorder_pd(dnnl_engine(), d.w, dnnl_engine(), want);
    dnnl_note(reorder_pd);
    dnnl::memory from(d.w, dnnl_engine(), const_cast<void*>(weight)), to(want, dnnl_engine(), t.raw());
    dnnl::stream stream(dnnl_engine());
    dnnl::reorder(reorder_pd).execute(stream, from, to);
    stream.wait();
    return t;
  };
  auto call = [&](const dnnl::convolution_forward::primitive_desc& p) {
    return std::make_unique<DnnlCall>(p, std::vector<DnnlArg>{{DNNL_ARG_SRC, d.x, false},
                                                              {DNNL_ARG_WEIGHTS, p.weights_desc(), false},
                                                              {DNNL_ARG_BIAS, d.b, false},
                                                              {DNNL_ARG_DST, d.y, true}});
  };
  weight_ = reordered(pd.weights_desc());
  bias_ = Tensor::empty({(int64_t)d.b.get_size()}, DType::u8);
  std::copy_n((const uint8_t*)bias, d.b.get_size(), bias_.data<uint8_t>());
  call_ = call(pd);
  if (!split_) return;
  if (q.src_zero_point != 0) {  // the zero point's primitive (its weights may carry the zero point's compensation)
    const auto low = qconv_pd(q, dt::s32, q.src_zero_point, false);
    weight_low_ = reordered(low.weights_desc());
    call_low_ = call(low);
  }
  const int64_t x_count = s.n * s.c * s.h * s.w, y_count = s.n * s.o * s.oh * s.ow;
  high_ = Tensor::empty({x_count}, DType::u8);
  low_ = Tensor::empty({x_count}, DType::u8);
  acc_high_ = Tensor::empty({y_count}, DType::i32);
  acc_low_ = Tensor::empty({y_count}, DType::i32);
  zero_bias_ = Tensor::zeros({s.o}, DType::i32);
}

void QConv::run(const void* x, void* y) {
  if (split_) return run_split(x, y);
  call_->run({x, weight_.raw(), bias_.raw(), y});
}

// acc = 128 conv(h) + conv(l − z), then the epilogue of the primitive it stands for (QConvSpec's formulas).
void QConv::run_split(const void* x, void* y) {
  const int64_t x_count = high_.numel(), y_count = acc_high_.numel(), o = q_.s.o;
  const uint8_t* xs = static_cast<const uint8_t*>(x);
  uint8_t *h = high_.data<uint8_t>(), *l = low_.data<uint8_t>();
#pragma omp parallel for simd schedule(static) if (x_count > 32768)
  for (int64_t i = 0; i < x_count; i++) {
    h[i] = xs[i] >> 7;
    l[i] = xs[i] & 127;
  }
  int32_t *ah = acc_high_.data<int32_t>(), *al = acc_low_.data<int32_t>();
  call_->run({h, weight_.raw(), zero_bias_.raw(), ah});
  if (call_low_) call_low_->run({l, weight_low_.raw(), zero_bias_.raw(), al});
  else call_->run({l, weight_.raw(), zero_bias_.raw(), al});
  const int32_t* b = static_cast<const int32_t*>(bias_.raw());  // the bias's bytes, as the primitive reads them
  const float* scales = q_.scales.data();
  const bool per_channel = q_.scales.size() > 1;
  const float hi = (float)q_.dst_max;
#pragma omp parallel for schedule(static) if (y_count > 32768)
  for (int64_t i = 0; i < y_count; i++) {  // NHWC: channel i % o
    const int64_t c = i % o;
    const int32_t acc = 128 * ah[i] + al[i];
    if (q_.dst == DType::i32) {
      static_cast<int32_t*>(y)[i] = acc + b[c];
      continue;
    }
    const float v = ((float)acc + (float)b[c]) * scales[per_channel ? c : 0];
    if (q_.dst == DType::u8) static_cast<uint8_t*>(y)[i] = (uint8_t)std::nearbyint(std::clamp(v, 0.0f, hi));
    else static_cast<float*>(y)[i] = q_.relu ? std::max(v, 0.0f) : v;
  }
}

void quantize_u8(const float* x, uint8_t* y, int64_t n, float s, int z, int q_max) {
  const float zf = (float)z, hi = (float)q_max;  // converted here, not in the loop, which then vectorizes
#pragma omp parallel for simd schedule(static) if (n > 32768)
  for (int64_t i = 0; i < n; i++) y[i] = (uint8_t)fake_quant_code(x[i], s, zf, 0.0f, hi);
}

void add_shortcut(const float* a, const float* r, float* y, int64_t n, bool relu) {
#pragma omp parallel for simd schedule(static) if (n > 32768)
  for (int64_t i = 0; i < n; i++) {
    const float v = a[i] + r[i];
    y[i] = relu && v < 0 ? 0.0f : v;  // NaN stays NaN
  }
}

void add_shortcut(const float* a, const uint8_t* r, float s_r, int z_r, float* y, int64_t n, bool relu) {
  const float z = (float)z_r;
#pragma omp parallel for simd schedule(static) if (n > 32768)
  for (int64_t i = 0; i < n; i++) {
    const float v = a[i] + s_r * ((float)r[i] - z);
    y[i] = relu && v < 0 ? 0.0f : v;
  }
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

// The max of each window per channel, the channels of a pixel contiguous (vectorized); f32 by pool_takes (a
// NaN wins), u8 by std::max.
template <class T>
static void max_pool_nhwc(int64_t n, int64_t h, int64_t w, int64_t c, int k, int s, int p, const T* x, T* y) {
  const int64_t oh = pool_out_size(h, k, s, p), ow = pool_out_size(w, k, s, p);
#pragma omp parallel for schedule(static) if (n * oh * ow * c * k * k > 32768)
  for (int64_t row = 0; row < n * oh; row++) {
    const int64_t b = row / oh, oi = row % oh;
    const PoolWindow wi = pool_window(oi, h, k, s, p);
    for (int64_t oj = 0; oj < ow; oj++) {
      const PoolWindow wj = pool_window(oj, w, k, s, p);
      T* out = y + (row * ow + oj) * c;
      std::copy_n(x + ((b * h + wi.lo) * w + wj.lo) * c, c, out);  // the window's first pixel
      for (int64_t i = wi.lo; i < wi.hi; i++)
        for (int64_t j = wj.lo; j < wj.hi; j++) {
          const T* v = x + ((b * h + i) * w + j) * c;
#pragma omp simd
          for (int64_t ch = 0; ch < c; ch++) {
            if constexpr (std::is_same_v<T, float>) out[ch] = pool_takes(v[ch], out[ch]) ? v[ch] : out[ch];
            else out[ch] = std::max(out[ch], v[ch]);
          }
        }
    }
  }
}

void max_pool_nhwc_u8(int64_t n, int64_t h, int64_t w, int64_t c, int k, int s, int p, const uint8_t* x, uint8_t* y) {
  max_pool_nhwc(n, h, w, c, k, s, p, x, y);
}

void max_pool_nhwc_f32(int64_t n, int64_t h, int64_t w, int64_t c, int k, int s, int p, const float* x, float* y) {
  max_pool_nhwc(n, h, w, c, k, s, p, x, y);
}

}  // namespace engine::cpu
