// Integer inference on the CPU (engine/cpu/int8.h, deploy/integer_model.h): each oneDNN int8 convolution
// against a plain integer loop (exact for the s32 accumulator, the requantized codes exact but at rounding
// ties), the FP32 layers against a double loop, and a small model's logits against ./ptq's fake-quantized
// forward of the same model.
#include <algorithm>
#include <cmath>

#include "engine/allocator.h"
#include "engine/autograd.h"
#include "engine/cpu/dnnl.h"
#include "engine/cpu/int8.h"
#include "engine/cuda/cuda_backend.h"
#include "engine/ops.h"
#include "engine/random.h"
#include "datasets/cifar10.h"
#include "datasets/loader.h"
#include "deploy/int8_model.h"
#include "deploy/integer_model.h"
#include "quant/deploy_export.h"
#include "quant/ptq_grid.h"
#include "tests/int8_testing.h"
#include "tests/testing.h"

using engine::ConvShape;
using engine::DType;
using engine::cpu::QConv;
using engine::cpu::QConvSpec;

namespace {

struct Case {
  int64_t n, c, h, w, o;
  int k, stride, groups;
  bool nchw;  // the src layout (else NHWC)
  int z;      // src zero point
};

ConvShape shape_of(const Case& t) {
  const int64_t oh = (t.h - 1) / t.stride + 1, ow = (t.w - 1) / t.stride + 1;
  return {t.n, t.c, t.h, t.w, t.o, t.k, t.k, oh, ow, t.stride, (t.k - 1) / 2, (t.k - 1) / 2, t.groups, true};
}

// acc[n, oh, ow, o] (NHWC) = Σ (x − z) w + b in int64, the padding the code z (real 0); x NHWC or NCHW.
template <class X, class W, class B, class Acc>
std::vector<Acc> reference(const ConvShape& s, bool nchw, const std::vector<X>& x, int z, const std::vector<W>& w,
                           const std::vector<B>& b) {
  std::vector<Acc> y(s.n * s.oh * s.ow * s.o);
  const int64_t cg = s.c / s.groups, og = s.o / s.groups;
  for (int64_t n = 0; n < s.n; n++)
    for (int64_t i = 0; i < s.oh; i++)
      for (int64_t j = 0; j < s.ow; j++)
        for (int64_t o = 0; o < s.o; o++) {
          Acc acc = (Acc)b[o];
          const int64_t g = o / og;
          for (int64_t c = 0; c < cg; c++)
            for (int64_t ki = 0; ki < s.kh; ki++)
              for (int64_t kj = 0; kj < s.kw; kj++) {
                const int64_t hi = i * s.stride + ki - s.ph, wj = j * s.stride + kj - s.pw;
                if (hi < 0 || hi >= s.h || wj < 0 || wj >= s.w) continue;
                const int64_t ch = g * cg + c;
                const X v = nchw ? x[((n * s.c + ch) * s.h + hi) * s.w + wj] : x[((n * s.h + hi) * s.w + wj) * s.c + ch];
                acc += ((Acc)v - (Acc)z) * (Acc)w[((o * cg + c) * s.kh + ki) * s.kw + kj];
              }
          y[((n * s.oh + i) * s.ow + j) * s.o + o] = acc;
        }
  return y;
}

QConvSpec spec(const ConvShape& s, const Case& t, DType src, DType dst) {
  QConvSpec q;
  q.s = s, q.src = src, q.dst = dst, q.src_nchw = t.nchw, q.src_zero_point = src == DType::u8 ? t.z : 0;
  return q;
}

const Case kCases[] = {
    {2, 16, 9, 7, 32, 3, 1, 1, false, 0},  {3, 24, 8, 8, 16, 3, 2, 1, false, 0},
    {2, 32, 6, 5, 32, 3, 1, 2, false, 0},  {2, 48, 7, 7, 64, 3, 2, 4, false, 0},
    {5, 40, 1, 1, 10, 1, 1, 1, false, 0},  {2, 3, 10, 11, 8, 3, 2, 1, true, 37},
    {1, 3, 12, 12, 16, 3, 1, 1, true, 128},
};

}  // namespace

TEST_CASE("int8 conv: the s32 accumulator equals a plain integer loop, exactly, on the exact split too") {
  // 8-bit codes saturate vpmaddubsw's s16 pair sums (2 · 255 · 127 > 32767): without VNNI QConv takes the
  // exact split for them; force_split runs it on any CPU.
  engine::Rng rng(11);
  for (const Case& t : kCases) {
    CAPTURE(t.c); CAPTURE(t.o); CAPTURE(t.stride); CAPTURE(t.groups); CAPTURE(t.z);
    const ConvShape s = shape_of(t);
    for (int bits : {8, 4})
      for (bool force_split : {false, true}) {
        CAPTURE(bits); CAPTURE(force_split);
        const int q_x = (1 << bits) - 1, q_w = (1 << (bits - 1)) - 1;
        std::vector<uint8_t> x(s.n * s.c * s.h * s.w);
        std::vector<int8_t> w(s.o * (s.c / s.groups) * s.kh * s.kw);
        std::vector<int32_t> b(s.o);
        for (auto& v : x) v = (uint8_t)rng.below(q_x + 1);
        for (auto& v : w) v = (int8_t)((int)rng.below(2 * q_w + 1) - q_w);
        w[0] = (int8_t)q_w;  // the largest code present: the split's test reads it
        for (auto& v : b) v = (int32_t)rng.below(20001) - 10000;
        QConvSpec q = spec(s, t, DType::u8, DType::i32);
        q.src_max = q_x;
        q.force_split = force_split;
        QConv conv(q, w.data(), b.data());
        CHECK(conv.split() == (force_split || !engine::cpu::int8_single_conv_exact(q_x, q_w)));
        std::vector<int32_t> y(s.n * s.o * s.oh * s.ow);
        conv.run(x.data(), y.data());
        const auto ref = reference<uint8_t, int8_t, int32_t, int64_t>(s, t.nchw, x, t.z, w, b);
        REQUIRE(y.size() == ref.size());
        for (size_t i = 0; i < y.size(); i++) REQUIRE(y[i] == ref[i]);
      }
  }
}

TEST_CASE("int8 conv: requantized u8 codes (scale, ReLU, code range fused) and f32 outputs against the loop; "
          "the exact split's epilogue gives oneDNN's") {
  engine::Rng rng(12);
  for (const Case& t : kCases) {
    CAPTURE(t.c); CAPTURE(t.o); CAPTURE(t.groups);
    const ConvShape s = shape_of(t);
    std::vector<uint8_t> x(s.n * s.c * s.h * s.w);
    std::vector<int8_t> w(s.o * (s.c / s.groups) * s.kh * s.kw);
    std::vector<int32_t> b(s.o);
    for (auto& v : x) v = (uint8_t)rng.below(256);
    for (auto& v : w) v = (int8_t)((int)rng.below(255) - 127);
    for (auto& v : b) v = (int32_t)rng.below(200001) - 100000;
    const auto acc = reference<uint8_t, int8_t, int32_t, int64_t>(s, t.nchw, x, t.z, w, b);
    for (bool per_channel : {false, true}) {
      std::vector<float> scales(per_channel ? s.o : 1);
      for (auto& v : scales) v = 1e-4f * (1.0f + (float)rng.below(1000) / 100.0f);
      auto scale = [&](size_t i) { return scales.size() == 1 ? scales[0] : scales[i % s.o]; };
      for (int dst_max : {255, 15}) {
        CAPTURE(per_channel); CAPTURE(dst_max);
        std::vector<uint8_t> y_single;  // the single convolution's codes, where it is exact here
        for (bool force_split : {false, true}) {
          CAPTURE(force_split);
          QConvSpec q = spec(s, t, DType::u8, DType::u8);
          q.scales = scales, q.dst_max = dst_max, q.force_split = force_split;
          QConv conv(q, w.data(), b.data());
          std::vector<uint8_t> y(acc.size());
          conv.run(x.data(), y.data());
          int ties = 0;
          for (size_t i = 0; i < y.size(); i++) {
            const float v = scale(i) * (float)acc[i];
            const float want = std::clamp(std::nearbyint(v), 0.0f, (float)dst_max);
            if ((float)y[i] == want) continue;
            // only a value at a rounding tie (to float precision) may round the other way
            REQUIRE(std::abs(std::abs(v - std::floor(v)) - 0.5f) < 1e-3f);
            REQUIRE(std::abs((float)y[i] - want) == 1.0f);
            ties++;
          }
          CHECK(ties <= (int)y.size() / 1000);
          if (!conv.split()) y_single = y;
          else if (!y_single.empty()) CHECK(y == y_single);  // our epilogue computes as oneDNN's, bit for bit
        }
      }
      for (bool force_split : {false, true}) {
        CAPTURE(force_split);
        QConvSpec q = spec(s, t, DType::u8, DType::f32);
        q.scales = scales, q.force_split = force_split;
        QConv conv(q, w.data(), b.data());
        std::vector<float> y(acc.size());
        conv.run(x.data(), y.data());
        for (size_t i = 0; i < y.size(); i++) {
          const double want = std::max(0.0, (double)scale(i) * (double)acc[i]);
          REQUIRE(std::abs(y[i] - want) <= 1e-6 * std::abs(want) + 1e-12);
        }
      }
    }
  }
}

TEST_CASE("int8 conv: an FP32 layer (f32 src, weights, bias) against a double loop") {
  engine::Rng rng(13);
  for (const Case& t : kCases) {
    const ConvShape s = shape_of(t);
    std::vector<float> x(s.n * s.c * s.h * s.w), w(s.o * (s.c / s.groups) * s.kh * s.kw), b(s.o);
    for (auto* v : {&x, &w, &b})
      for (float& e : *v) e = rng.normal();
    for (bool relu : {true, false}) {
      QConvSpec q = spec(s, t, DType::f32, DType::f32);
      q.relu = relu;
      QConv conv(q, w.data(), b.data());
      std::vector<float> y(s.n * s.o * s.oh * s.ow);
      conv.run(x.data(), y.data());
      const auto ref = reference<float, float, float, double>(s, t.nchw, x, 0, w, b);
      for (size_t i = 0; i < y.size(); i++) {
        const double want = relu ? std::max(0.0, ref[i]) : ref[i];
        REQUIRE(std::abs(y[i] - want) <= 1e-4 * (1 + std::abs(want)));
      }
    }
  }
}

TEST_CASE("int8 quantize_u8 and avg_pool_nhwc against their scalar references") {
  engine::Rng rng(14);
  std::vector<float> x(100003);
  for (float& v : x) v = 3.0f * rng.normal();
  x[0] = 0.5f, x[1] = 1.5f, x[2] = 2.5f;  // ties, to even
  std::vector<uint8_t> y(x.size());
  for (int bits : {8, 4}) {
    const quant::AffineQuant p = quant::asymmetric_params(-2.0f, 5.0f, bits);
    engine::cpu::quantize_u8(x.data(), y.data(), (int64_t)x.size(), p.scale, p.zero_point, (1 << bits) - 1);
    for (size_t i = 0; i < x.size(); i++) REQUIRE((int)y[i] == quant::quantize_asymmetric(x[i], p));
  }
  const int64_t n = 3, hw = 49, c = 40;
  std::vector<float> a(n * hw * c), pooled(n * c);
  for (float& v : a) v = rng.normal();
  engine::cpu::avg_pool_nhwc(n, hw, c, a.data(), pooled.data());
  for (int64_t i = 0; i < n; i++)
    for (int64_t k = 0; k < c; k++) {
      double sum = 0;
      for (int64_t p = 0; p < hw; p++) sum += a[(i * hw + p) * c + k];
      REQUIRE(std::abs(pooled[i * c + k] - sum / hw) <= 1e-5);
    }
}

namespace {

// Per image, max_j |a_j − b_j| / max_j |b_j|, sorted; and how many argmaxes agree.
struct LogitDiff {
  std::vector<double> rel;
  int agree = 0;
  double median() const { return rel[rel.size() / 2]; }
};
LogitDiff compare(const std::vector<float>& a, const std::vector<float>& b, int64_t n) {
  LogitDiff d;
  const int64_t k = (int64_t)a.size() / n;
  for (int64_t i = 0; i < n; i++) {
    double top = 0, diff = 0;
    for (int64_t j = 0; j < k; j++) {
      top = std::max(top, (double)std::abs(b[i * k + j]));
      diff = std::max(diff, (double)std::abs(a[i * k + j] - b[i * k + j]));
    }
    d.rel.push_back(diff / top);
    auto argmax = [&](const std::vector<float>& v) { return std::max_element(&v[i * k], &v[i * k] + k) - &v[i * k]; };
    d.agree += argmax(a) == argmax(b);
  }
  std::sort(d.rel.begin(), d.rel.end());
  return d;
}

std::vector<float> forward(models::Model& m, const engine::Tensor& x) {
  engine::NoGradGuard no_grad;
  return m.forward(x).to_vector();
}

}  // namespace

// Where the two differ, and the bounds. Both add the bias on its int32 grid q_b s_x s_w (layers::eval_bias),
// so only float rounding is left (the fake path's conv summation order and scale products against exact
// integer sums): a code moves only at an exact rounding tie. Bounds, per image the largest |logit
// difference| over the largest |logit| (measured ~5e-8 at 8 bits, ~9e-8 at 4): median below 1e-5 and every
// argmax the same. (With the FP32 bias in the fake path, as before eval_bias, it was ~0.6% and ~30%.)
TEST_CASE("int8 model: logits against ./ptq's fake-quantized forward of the same model") {
  for (int bits : {8, 4})
    for (quant::Granularity g : {quant::Granularity::layer, quant::Granularity::channel})
      for (bool first_last : {false, true}) {
        CAPTURE(bits); CAPTURE((int)g); CAPTURE(first_last);
        const QuantizedSmall q = quantized_small(bits, g, first_last);
        const int64_t n = q.images.size(0);
        const deploy::Int8Model m = quant::export_int8(*q.model, "ptq-minmax", quant::granularity_name(g), {});
        deploy::IntegerModel im(m);
        const LogitDiff d = compare(im.forward(q.images).to_vector(), forward(*q.model, q.images), n);
        MESSAGE("W", bits, " ", std::string(quant::granularity_name(g)), first_last ? ", first/last quantized" : "",
                ": median relative logit difference ", d.median(), "; argmax agree ", d.agree, " of ", n);
        CHECK(d.median() < 1e-5);
        CHECK(d.agree == n);
      }
}

// Mixed precision through export: layers kept in float among the quantized ones (--layer-bits NAME=fp32) run
// as FP32 inside the integer model, the quantized block before one writing f32 and the one after it
// quantizing its input again; the same bounds as above against the fake-quantized forward.
TEST_CASE("int8 model: FP32 layers among the quantized ones (--layer-bits NAME=fp32) against the fake-quantized forward") {
  for (int bits : {8, 4}) {
    CAPTURE(bits);
    const QuantizedSmall q = quantized_small(bits, quant::Granularity::channel, false, "stage1.1=fp32,stage2.*=fp32,stage3.0=fp32");
    const int64_t n = q.images.size(0);
    const deploy::Int8Model m = quant::export_int8(*q.model, "ptq-minmax", "channel", {});
    int fp32 = 0;
    for (const deploy::Int8Layer& l : m.layers) fp32 += !l.quantized;
    CHECK(fp32 == 2 + 1 + 8 + 1);  // stage0 and the FC, stage1.1, stage2.0-7, stage3.0
    CHECK(m.layers[2].name == "stage1.1");
    CHECK_FALSE(m.layers[2].quantized);
    CHECK(m.layers[3].quantized);
    deploy::IntegerModel im(m);
    const LogitDiff d = compare(im.forward(q.images).to_vector(), forward(*q.model, q.images), n);
    MESSAGE("W", bits, " with 11 FP32 blocks: median relative logit difference ", d.median(), "; argmax agree ", d.agree, " of ", n);
    CHECK(d.median() < 1e-5);
    CHECK(d.agree == n);
  }
}

// Several widths in one model: each layer quantizes at its own W/A, and a block writes the codes of the next
// one's range (here 8-bit codes into stage2's 4-bit-weight blocks, 6-bit codes into stage3.0, 5-bit ones into
// the block after it), an FP32 block among them; the same bounds against the fake-quantized forward.
TEST_CASE("int8 model: layers at different widths (--layer-bits stage2.*=4,stage3.0=6/6,...) against the fake-quantized forward") {
  for (quant::Granularity g : {quant::Granularity::layer, quant::Granularity::channel}) {
    CAPTURE((int)g);
    const QuantizedSmall q = quantized_small(8, g, false, "stage1.1=fp32,stage2.*=4,stage3.0=6/6,stage3.1=3/5,stage3.2=7/2");
    const int64_t n = q.images.size(0);
    const deploy::Int8Model m = quant::export_int8(*q.model, "ptq-minmax", quant::granularity_name(g), {});
    auto widths = [&](const std::string& name) {
      for (const deploy::Int8Layer& l : m.layers)
        if (l.name == name) return l.widths;
      return models::LayerBits{-1, -1};
    };
    CHECK(widths("stage1.0") == models::LayerBits{8, 8});
    CHECK(widths("stage1.1") == models::LayerBits{});
    CHECK(widths("stage2.3") == models::LayerBits{4, 8});
    CHECK(widths("stage3.0") == models::LayerBits{6, 6});
    CHECK(widths("stage3.1") == models::LayerBits{3, 5});
    CHECK(widths("stage3.2") == models::LayerBits{7, 2});
    deploy::IntegerModel im(m);
    const LogitDiff d = compare(im.forward(q.images).to_vector(), forward(*q.model, q.images), n);
    MESSAGE(deploy::width_summary(m), ": median relative logit difference ", d.median(), "; argmax agree ", d.agree, " of ", n);
    CHECK(d.median() < 1e-5);
    CHECK(d.agree == n);
  }
}

// ResNet-18's graph in the integer model: the shortcut added in f32 to the conv's dequantized output before the
// ReLU and the readers' requantization, the block input read as codes by conv1, the downsample and the identity
// shortcut at one scale, the downsample writing f32, the ImageNet stem's max pool over its output; the same bounds
// as RepVGG's against the fake-quantized forward. Also with an FP32 conv1 before a quantized downsample (the
// downsample then quantizes the input itself) and before an identity shortcut (which adds the float input).
TEST_CASE("int8 model: ResNet-18 (shortcut adds, 1x1 downsamples, the ImageNet stem's max pool) against the fake-quantized forward") {
  struct Run {
    const char* arch;
    int bits;
    quant::Granularity g;
    bool first_last;
    const char* spec;
  };
  const quant::Granularity layer = quant::Granularity::layer, channel = quant::Granularity::channel;
  const Run runs[] = {{"resnet18-cifar-w8", 8, channel, false, ""},
                      {"resnet18-cifar-w8", 4, layer, true, ""},
                      {"resnet18-w8", 8, channel, true, ""},
                      {"resnet18-w8", 4, channel, false, ""},
                      {"acb-resnet18-cifar-w8", 8, layer, false, ""},
                      {"orepa-resnet18-cifar-w8", 4, channel, false, ""},
                      {"resnet18-cifar-w8", 8, channel, false, "layer1.0.conv1=fp32,layer2.0.conv1=fp32,layer3.*=6/6"}};
  for (const Run& r : runs) {
    CAPTURE(r.arch); CAPTURE(r.bits); CAPTURE((int)r.g); CAPTURE(r.first_last); CAPTURE(r.spec);
    const QuantizedSmall q = quantized_small(r.bits, r.g, r.first_last, r.spec, r.arch);
    const int64_t n = q.images.size(0);
    const deploy::Int8Model m = quant::export_int8(*q.model, "ptq-minmax", quant::granularity_name(r.g), {});
    deploy::IntegerModel im(m);
    const LogitDiff d = compare(im.forward(q.images).to_vector(), forward(*q.model, q.images), n);
    MESSAGE(std::string(r.arch), " ", deploy::width_summary(m), std::string(r.first_last ? ", first/last quantized " : " "), std::string(r.spec),
            ": median relative logit difference ", d.median(), "; argmax agree ", d.agree, " of ", n);
    CHECK(d.median() < 1e-5);
    CHECK(d.agree == n);
    const std::vector<std::string> layers = im.describe();
    REQUIRE(layers.size() == m.layers.size());
    for (size_t i = 0; i < layers.size(); i++) {
      CAPTURE(layers[i]);
      const deploy::Int8Layer& l = m.layers[i];
      if (l.name.ends_with("downsample")) CHECK(layers[i].find("-> f32") != std::string::npos);
      if (l.residual >= 0) CHECK(layers[i].find(" + " + m.layers[l.residual].name) != std::string::npos);
      CHECK((layers[i].find("max pool") != std::string::npos) == l.max_pool);
    }
  }
}

// The steady state of a graph with shortcuts and a max pool as well.
TEST_CASE("int8 model: the steady-state forward creates no primitive and allocates nothing") {
  for (const char* arch : {"", "resnet18-w8"}) {
    CAPTURE(arch);
    const QuantizedSmall q = quantized_small(8, quant::Granularity::channel, false, "", arch);
    deploy::IntegerModel im(quant::export_int8(*q.model, "ptq-minmax", "channel", {}));
    const std::vector<float> first = im.forward(q.images).to_vector();
    const uint64_t prims = engine::cpu::dnnl_primitives_created();
    const uint64_t allocs = engine::alloc_stats(engine::Device::cpu).system_allocs;
    for (int i = 0; i < 3; i++) CHECK(im.forward(q.images).to_vector() == first);
    CHECK(engine::cpu::dnnl_primitives_created() == prims);
    CHECK(engine::alloc_stats(engine::Device::cpu).system_allocs == allocs);
  }
}

// A ClusterQAT layer in s8: the export's codes are the codebook entries rounded on their output channel's
// grid s_w[o] = max |w[o, ...]| / 127 (a plain reference here), so each integer weight is within s_w[o] / 2 of
// the QAT model's.
TEST_CASE("int8 cluster: each weight is its codebook entry rounded on s_w[o] = max |w[o, ...]| / 127") {
  const QuantizedSmall q = cluster_small(3, 3, false);
  const deploy::Int8Model m = quant::export_int8(*q.model, "qat-cluster", "channel", {});
  for (const deploy::Int8Layer& l : m.layers)
    CHECK(l.widths == (l.quantized ? models::LayerBits{8, 3} : models::LayerBits{}));  // the s8 grid
  int checked = 0;
  for (size_t i = 0; i + 1 < m.layers.size(); i++) {
    const layers::RepBlock& b = *q.model->blocks()[i];
    const deploy::Int8Layer& l = m.layers[i];
    REQUIRE(l.quantized == (b.quant.cluster != nullptr));
    if (!l.quantized) continue;
    const std::vector<float> w = b.quant.cluster->forward(b.rbr_reparam->weight).to_vector();  // eval: the entries
    const std::vector<float> c = b.quant.cluster->codebook.to_vector();
    REQUIRE(w.size() == l.weight_codes.size());
    REQUIRE(l.weight_scale.size() == (size_t)l.out);
    const size_t per_row = w.size() / l.out;
    for (int o = 0; o < l.out; o++) {
      float top = 0;
      for (size_t k = 0; k < per_row; k++) {
        const float v = w[o * per_row + k];
        CHECK(std::find(c.begin(), c.end(), v) != c.end());
        top = std::max(top, std::fabs(v));
      }
      const float s = l.weight_scale[o];
      CHECK(s == top / 127);
      for (size_t k = o * per_row; k < (o + 1) * per_row; k++) {
        CHECK(l.weight_codes[k] == (int)std::nearbyint(w[k] / s));
        CHECK(std::fabs(l.weight_codes[k] * s - w[k]) <= s / 2 * (1 + 1e-6f));
      }
    }
    checked++;
  }
  CHECK(checked == (int)m.layers.size() - 2);  // stage0 and the FC stay FP32
}

// Against the QAT model's eval (fake quantization with the float codebook entries and float biases), the
// integer model differs by the s8 rounding of each weight (≤ s_w[o] / 2) and of the bias (≤ s_x s_w[o] / 2),
// which moves an activation code where the value was near a rounding boundary. Measured here (per image,
// largest |logit difference| over the largest |logit|): median 2.3e-4 at W3/A3, 0.023 at W4/A8 (largest
// 0.11), 3.0e-4 at W2/A8 with stage0 and the FC quantized, every argmax the same; bounds: median below 0.05,
// at least 30 of 32 argmaxes the same. (On a trained model the loss is far larger: docs/int8.md.)
TEST_CASE("int8 cluster: logits against the ClusterQAT model's eval forward") {
  struct Case {
    int bits, act_bits;
    bool first_last;
  };
  for (const Case& c : {Case{3, 3, false}, Case{4, 8, false}, Case{2, 8, true}}) {
    CAPTURE(c.bits); CAPTURE(c.act_bits); CAPTURE(c.first_last);
    const QuantizedSmall q = cluster_small(c.bits, c.act_bits, c.first_last);
    const int64_t n = q.images.size(0);
    deploy::IntegerModel im(quant::export_int8(*q.model, "qat-cluster", "channel", {}));
    const LogitDiff d = compare(im.forward(q.images).to_vector(), forward(*q.model, q.images), n);
    MESSAGE("cluster W", c.bits, "/A", c.act_bits, std::string(c.first_last ? ", first/last quantized" : ""),
            ": median relative logit difference ", d.median(), ", largest ", d.rel.back(), "; argmax agree ", d.agree, " of ", n);
    CHECK(d.median() < 0.05);
    CHECK(d.agree >= n - 2);
  }
}

// E[x_{c,t}] by the definition: over images and output positions (oh, ow), the input tap (kh, kw) of a 3x3,
// padding-1, stride-s conv reads, x[n, c, oh·s + kh − 1, ow·s + kw − 1], 0 in the padding. x [N, C, H, W].
std::vector<double> tap_means(const std::vector<float>& x, int64_t n, int64_t c, int64_t h, int64_t w, int s) {
  const int64_t oh = (h - 1) / s + 1, ow = (w - 1) / s + 1;
  std::vector<double> mean(c * 9, 0.0);
  for (int64_t b = 0; b < n; b++)
    for (int64_t ch = 0; ch < c; ch++)
      for (int64_t y = 0; y < oh; y++)
        for (int64_t z = 0; z < ow; z++)
          for (int kh = 0; kh < 3; kh++)
            for (int kw = 0; kw < 3; kw++) {
              const int64_t ih = y * s + kh - 1, iw = z * s + kw - 1;
              if (ih >= 0 && ih < h && iw >= 0 && iw < w) mean[ch * 9 + kh * 3 + kw] += x[((b * c + ch) * h + ih) * w + iw];
            }
  for (double& m : mean) m /= double(n * oh * ow);
  return mean;
}

// input_means against the layers' inputs computed block by block here (plain NCHW; the model's own forward
// hands blocked nChw16c tensors to the quantizers), quantized by each block's quantizer, averaged per tap
// by the definition above; stride-1 and stride-2 blocks.
TEST_CASE("int8 cluster: input_means is what each weight reads of the quantized input, on average") {
  const QuantizedSmall q = cluster_small(4, 8, false);
  auto train = data::open_cifar10(small_cifar().string(), true);
  data::Loader loader(*train, 32, /*train=*/false, 0, 1);
  const quant::InputMeans means = quant::input_means(*q.model, loader, 2, engine::Device::cpu);

  const auto& blocks = q.model->blocks();
  std::vector<std::vector<double>> sum(blocks.size());
  data::Loader again(*train, 32, /*train=*/false, 0, 1);
  again.start_epoch(0);
  engine::NoGradGuard no_grad;
  for (int b = 0; b < 2; b++) {
    engine::Tensor x, labels;
    data::to_tensors(*again.next(), engine::Device::cpu, x, labels);
    for (size_t i = 0; i < blocks.size(); i++) {
      if (blocks[i]->quant.act) {
        const std::vector<double> m = tap_means(blocks[i]->quant.act->forward(x).to_vector(), x.size(0), x.size(1),
                                                x.size(2), x.size(3), blocks[i]->stride);
        sum[i].resize(m.size(), 0.0);
        for (size_t k = 0; k < m.size(); k++) sum[i][k] += m[k] / 2;  // two batches of 32
      }
      x = blocks[i]->forward(x);
    }
  }
  std::vector<std::string> names;
  for (const models::QuantLayer& l : q.model->quant_layers()) names.push_back(l.name);
  size_t checked = 0, strided = 0;
  for (size_t i = 0; i < blocks.size(); i++) {
    CAPTURE(names[i]);
    REQUIRE(means.count(names[i]) == (blocks[i]->quant.act ? 1u : 0u));
    if (!blocks[i]->quant.act) continue;
    const std::vector<float>& got = means.at(names[i]);
    REQUIRE(got.size() == sum[i].size());
    for (size_t k = 0; k < got.size(); k++) CHECK(got[k] == doctest::Approx(sum[i][k]).epsilon(1e-5));
    checked++;
    strided += blocks[i]->stride == 2;
  }
  CHECK(checked == blocks.size() - 1);  // stage0 keeps FP32 inputs
  CHECK(strided >= 2);
  CHECK(means.count("linear") == 0);
}

// cluster_bias_correction is what the s8 rounding adds to an output on average: over every output position
// of an image, padding included, mean(conv(x, ŵ) − conv(x, w)) (the engine's float conv, ŵ = s_w q_w) is
// δ[o] computed from that image's tap means. A layer of the small model (groups 1) and made-up grouped
// ones (groups 2, stride 1 and 2).
TEST_CASE("int8 cluster: the bias correction is the rounding's mean error on the measured input") {
  engine::Rng rng(11);
  struct Layer {
    deploy::Int8Layer l;
    std::vector<float> w;
  };
  std::vector<Layer> cases;
  {
    const QuantizedSmall q = cluster_small(3, 8, false);
    const deploy::Int8Model m = quant::export_int8(*q.model, "qat-cluster", "channel", {});
    const layers::RepBlock& b = *q.model->blocks()[2];
    cases.push_back({m.layers[2], b.quant.cluster->forward(b.rbr_reparam->weight).to_vector()});
  }
  for (int stride : {1, 2}) {
    deploy::Int8Layer l;
    l.name = "made-up", l.in = 6, l.out = 4, l.groups = 2, l.stride = stride, l.quantized = true;
    const int64_t n = (int64_t)l.out * (l.in / l.groups) * 9;
    l.weight_scale = engine::rand_uniform({l.out}, 0.01f, 0.02f, rng).to_vector();
    const std::vector<float> noise = engine::rand_uniform({n}, -0.5f, 0.5f, rng).to_vector();
    std::vector<float> w(n);
    for (int64_t i = 0; i < n; i++) {
      l.weight_codes.push_back(int8_t(int(i * 37 % 255) - 127));
      w[i] = (l.weight_codes[i] + noise[i]) * l.w_scale(int(i / (n / l.out)));  // off the grid by up to s/2
    }
    cases.push_back({l, w});
  }
  for (const Layer& c : cases) {
    const deploy::Int8Layer& l = c.l;
    CAPTURE(l.name); CAPTURE(l.stride);
    const int64_t h = 7, w = 6;
    const engine::Tensor x = engine::rand_uniform({2, l.in, h, w}, 0.0f, 2.0f, rng);
    const std::vector<double> m = tap_means(x.to_vector(), 2, l.in, h, w, l.stride);
    const std::vector<float> delta = deploy::cluster_bias_correction(l, c.w, std::vector<float>(m.begin(), m.end()));
    std::vector<float> rounded(c.w.size());
    for (size_t i = 0; i < c.w.size(); i++) rounded[i] = l.w_scale(int(i / (c.w.size() / l.out))) * l.weight_codes[i];
    const engine::Tensor zero = engine::Tensor::zeros({l.out});
    const engine::Shape ws = {l.out, l.in / l.groups, 3, 3};
    const engine::Tensor ya = engine::conv2d(x, engine::Tensor::from_vector(rounded, ws), zero, l.stride, 1, l.groups);
    const engine::Tensor yb = engine::conv2d(x, engine::Tensor::from_vector(c.w, ws), zero, l.stride, 1, l.groups);
    const std::vector<float> a = ya.to_vector(), b = yb.to_vector();
    const int64_t per = ya.size(2) * ya.size(3);
    for (int o = 0; o < l.out; o++) {
      double diff = 0, size = 0;
      for (int64_t n = 0; n < 2; n++)
        for (int64_t k = 0; k < per; k++) {
          const size_t i = (n * l.out + o) * per + k;
          diff += a[i] - b[i];
          size += std::fabs(a[i]);
        }
      CHECK(diff / (2 * per) == doctest::Approx(delta[o]).epsilon(1e-4).scale(size / (2 * per)));
    }
  }
  CHECK_THROWS_WITH(deploy::cluster_bias_correction(cases[1].l, cases[1].w, {1, 2}),
                    doctest::Contains("layer made-up: 2 input means for 6 input channels × 9 taps"));
}

// Without a CUDA build or a GPU, --device cuda fails at once with the reason (engine::cuda::require).
TEST_CASE("int8 model: device cuda without a usable GPU is refused with the reason" *
          skip_unless(!engine::cuda::available(), "a CUDA GPU is present (tests/test_cuda.cpp runs the model on it)")) {
  const QuantizedSmall q = quantized_small(8, quant::Granularity::layer, false);
  const deploy::Int8Model m = quant::export_int8(*q.model, "ptq-minmax", "layer", {});
  CHECK_THROWS_WITH(deploy::IntegerModel(m, engine::Device::cuda), engine::cuda::unavailable_reason().c_str());
}
