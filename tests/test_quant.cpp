// Quantizers against their scalar definitions (round trip bounds, symmetric codes, exact zero point, only
// B-bit codes, ties to even), the tensor versions against the scalar ones, calibration ranges, the
// quantized network wrapper, and ./inspect's Class A/B/C positions on hand-built blocks.
#include <algorithm>
#include <cmath>
#include <set>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/random.h"
#include "engine/scalar_math.h"
#include "layers/quantizer.h"
#include "layers/reparam.h"
#include "layers/repvgg_block.h"
#include "models/repvgg.h"
#include "quant/calibration.h"
#include "quant/inspect.h"
#include "quant/ptq_grid.h"
#include "quant/ptq_model.h"
#include "tests/testing.h"

using namespace quant;
using engine::Rng;
using engine::Shape;
using engine::Tensor;

// The codes of every quantizer: round half to even, as torch.round
static float round_half_even(float x) { return engine::fake_quant_code(x, 1.0f, 0.0f, -128.0f, 127.0f); }

TEST_CASE("rounding: half to even, as torch.round") {
  CHECK(round_half_even(0.5f) == 0.0f);
  CHECK(round_half_even(1.5f) == 2.0f);
  CHECK(round_half_even(2.5f) == 2.0f);
  CHECK(round_half_even(-2.5f) == -2.0f);
  CHECK(round_half_even(-3.5f) == -4.0f);
  CHECK(round_half_even(2.4999f) == 2.0f);
  CHECK(round_half_even(2.5001f) == 3.0f);
}

TEST_CASE("symmetric quantizer: restricted codes, round trip within s/2, odd symmetry") {
  Rng rng(1);
  for (int bits : {2, 3, 4, 6, 8}) {
    CAPTURE(bits);
    const int qmax = (1 << (bits - 1)) - 1;
    CHECK(symmetric_qmax(bits) == qmax);
    const float m = 0.37f;
    const float s = symmetric_scale(m, bits);
    CHECK(s == m / (float)qmax);  // s = max|w| / (2^(B-1) - 1)
    CHECK(fake_quant_symmetric(m, s, bits) == doctest::Approx(m).epsilon(1e-6));
    CHECK(fake_quant_symmetric(-m, s, bits) == doctest::Approx(-m).epsilon(1e-6));
    CHECK(quantize_symmetric(10 * m, s, bits) == qmax);    // clamped
    CHECK(quantize_symmetric(-10 * m, s, bits) == -qmax);  // never -2^(B-1)
    for (int k = 0; k < 2000; k++) {
      const float w = rng.uniform(-m, m);
      const int q = quantize_symmetric(w, s, bits);
      CHECK(q >= -qmax);
      CHECK(q <= qmax);
      CHECK(q == (int)std::nearbyint(w / s));  // inside the range no clamp applies
      CHECK(std::fabs((double)w - fake_quant_symmetric(w, s, bits)) <= s / 2 * (1 + 1e-5));
      CHECK(fake_quant_symmetric(-w, s, bits) == -fake_quant_symmetric(w, s, bits));
    }
  }
  CHECK(symmetric_scale(0.0f, 8) == 1.0f);  // an all-zero tensor: every code 0
  CHECK(fake_quant_symmetric(0.0f, 1.0f, 8) == 0.0f);
  CHECK(quantize_symmetric(2.5f, 1.0f, 8) == 2);  // ties to even
  CHECK(quantize_symmetric(-1.5f, 1.0f, 8) == -2);
  CHECK_THROWS_WITH_AS(symmetric_qmax(1), doctest::Contains("bit width 1 is outside 2..16"), std::runtime_error);
}

TEST_CASE("asymmetric quantizer: s and z as defined, 0.0 exact, B-bit codes only, round trip within s/2") {
  Rng rng(2);
  struct R { float lo, hi; };
  for (R r : {R{-0.8f, 2.3f}, R{0.0f, 5.0f}, R{-3.0f, -1.0f}, R{0.5f, 4.0f}, R{-1e-3f, 7.0f}})
    for (int bits : {2, 4, 6, 8}) {
      CAPTURE(bits);
      CAPTURE(r.lo);
      CAPTURE(r.hi);
      const int qmax = (1 << bits) - 1;
      const AffineQuant p = asymmetric_params(r.lo, r.hi, bits);
      const float lo = std::min(r.lo, 0.0f), hi = std::max(r.hi, 0.0f);  // widened to contain 0
      CHECK(p.scale == (hi - lo) / (float)qmax);
      CHECK(p.zero_point == std::clamp((int)std::nearbyint(-lo / p.scale), 0, qmax));
      CHECK(fake_quant_asymmetric(0.0f, p) == 0.0f);  // exactly
      CHECK(quantize_asymmetric(0.0f, p) == p.zero_point);
      CHECK(quantize_asymmetric(hi + 100, p) == qmax);
      CHECK(quantize_asymmetric(lo - 100, p) == 0);
      std::set<int> codes;
      for (int k = 0; k < 3000; k++) {
        const float x = rng.uniform(lo, hi);
        const int q = quantize_asymmetric(x, p);
        CHECK(q >= 0);
        CHECK(q <= qmax);
        codes.insert(q);
        CHECK(std::fabs((double)x - fake_quant_asymmetric(x, p)) <= p.scale / 2 * (1 + 1e-4));
      }
      CHECK((int)codes.size() <= qmax + 1);
    }
  const AffineQuant zero = asymmetric_params(0, 0, 8);  // a layer whose input is always 0
  CHECK(zero.scale == 1.0f);
  CHECK(zero.zero_point == 0);
  CHECK(fake_quant_asymmetric(0.0f, zero) == 0.0f);
  CHECK_THROWS_WITH_AS(asymmetric_params(1, -1, 8), doctest::Contains("bad activation range"), std::runtime_error);
}

// What ./ptq puts on a weight: a uniform weight quantizer (layers/quantizer.h) at the steps of weight_scales.
static Tensor ptq_weight(const Tensor& w, int bits, Granularity g) {
  const std::vector<float> scales = weight_scales(w, bits, g);
  layers::Quantizer q(bits, layers::Codes::weight, (int64_t)scales.size());
  q.set_step(scales);
  q.eval();
  return q.forward(w);
}

TEST_CASE("PTQ weights: per layer and per output channel, against the scalar quantizer") {
  Rng rng(3);
  Tensor w = engine::rand_normal({6, 4, 3, 3}, 0.0f, 0.2f, rng);
  float* pw = w.f32();
  for (int i = 0; i < 36; i++) pw[2 * 36 + i] *= 10;  // channel 2 holds the outlier
  for (int i = 0; i < 36; i++) pw[4 * 36 + i] = 0;    // channel 4 is all zero
  const std::vector<float> v = w.to_vector();
  for (int bits : {4, 8}) {
    CAPTURE(bits);
    float max_all = 0;
    for (float x : v) max_all = std::max(max_all, std::fabs(x));
    const std::vector<float> layer = ptq_weight(w, bits, Granularity::layer).to_vector();
    const std::vector<float> channel = ptq_weight(w, bits, Granularity::channel).to_vector();
    CHECK(weight_scales(w, bits, Granularity::layer) == std::vector<float>{symmetric_scale(max_all, bits)});
    const std::vector<float> scales = weight_scales(w, bits, Granularity::channel);
    REQUIRE(scales.size() == 6);
    for (int o = 0; o < 6; o++) {
      float m = 0;
      for (int i = 0; i < 36; i++) m = std::max(m, std::fabs(v[o * 36 + i]));
      CHECK(scales[o] == symmetric_scale(m, bits));
      std::set<float> distinct;
      for (int i = 0; i < 36; i++) {
        const int k = o * 36 + i;
        CHECK(layer[k] == fake_quant_symmetric(v[k], symmetric_scale(max_all, bits), bits));
        CHECK(channel[k] == fake_quant_symmetric(v[k], scales[o], bits));
        distinct.insert(channel[k]);
      }
      CHECK((int)distinct.size() <= 2 * symmetric_qmax(bits) + 1);
    }
    for (int i = 0; i < 36; i++) CHECK(channel[4 * 36 + i] == 0.0f);
    // per channel, the small channels keep more of their values than with the outlier's layer scale
    double err_layer = 0, err_channel = 0;
    for (size_t k = 0; k < v.size(); k++) {
      err_layer += std::fabs(v[k] - layer[k]);
      err_channel += std::fabs(v[k] - channel[k]);
    }
    CHECK(err_channel < err_layer);
  }
  CHECK(parse_granularity("channel") == Granularity::channel);
  CHECK_THROWS_WITH_AS(parse_granularity("tensor"), doctest::Contains("'tensor' is not one of layer, channel"), std::runtime_error);
}

TEST_CASE("PTQ activations: the affine quantizer module equals the scalar quantizer element for element") {
  Rng rng(4);
  Tensor x = engine::rand_normal({3, 5, 7, 7}, 0.5f, 2.0f, rng);
  float* px = x.f32();
  for (int i = 0; i < x.numel(); i += 11) px[i] = 0.0f;  // ReLU zeros
  for (int bits : {2, 4, 8}) {
    const AffineQuant p = asymmetric_params(-1.0f, 3.0f, bits);  // values beyond both ends clamp
    layers::Quantizer q(bits, layers::Codes::unsigned_act);  // as quant::attach_quantizers sets it up
    q.set_step({p.scale});
    q.zero_point = p.zero_point;
    q.eval();
    const std::vector<float> got = q.forward(x).to_vector(), v = x.to_vector();
    size_t mismatches = 0;
    for (size_t i = 0; i < v.size(); i++) mismatches += got[i] != fake_quant_asymmetric(v[i], p);
    CHECK(mismatches == 0);
  }
}

TEST_CASE("calibration: min-max, percentiles, and the MSE range search") {
  std::vector<float> v;
  for (int i = 0; i <= 100; i++) v.push_back((float)i);
  CHECK(percentile(v, 50) == doctest::Approx(50));
  CHECK(percentile(v, 0) == doctest::Approx(0));
  CHECK(percentile(v, 100) == doctest::Approx(100));
  CHECK(percentile(v, 99.99) == doctest::Approx(99.99));  // linear interpolation, as numpy
  CHECK(percentile({3.0f}, 99.99) == doctest::Approx(3));

  // A heavy tail: N(0, 1) values and a few large outliers.
  Rng rng(5);
  std::vector<float> values;
  for (int i = 0; i < 40000; i++) values.push_back((float)rng.normal());
  values[7] = 60.0f;
  values[9] = -25.0f;
  ActObserver obs(5000, 1);
  Tensor t = Tensor::from_vector(values, Shape{(int64_t)values.size()});
  obs.observe(t);
  obs.observe(engine::mul_scalar(t, 0.5f));
  CHECK(obs.count == 80000);
  CHECK(obs.sample.size() == 10000);
  CHECK(obs.min == -25.0f);
  CHECK(obs.max == 60.0f);
  const Range mm = range_minmax(obs);
  CHECK(mm.lo == -25.0f);
  CHECK(mm.hi == 60.0f);
  const Range pc = range_percentile(obs);
  CHECK(pc.hi < 6.0f);  // the outliers are beyond the 99.99th percentile
  CHECK(pc.lo > -6.0f);
  const Range ms = range_mse(obs, 4);
  CHECK(ms.hi < mm.hi);
  CHECK(ms.hi == doctest::Approx(ms.lo / mm.lo * mm.hi));  // α [min, max]
  CHECK(quant_mse(obs.sample, ms, 4) <= quant_mse(obs.sample, mm, 4));
  CHECK(quant_mse(obs.sample, ms, 4) <= quant_mse(obs.sample, {0.5f * mm.lo, 0.5f * mm.hi}, 4));
  CHECK(calibrate(obs, CalibMethod::minmax, 4).hi == 60.0f);
  CHECK_THROWS_WITH_AS(range_minmax(ActObserver()), doctest::Contains("no activations were observed"), std::runtime_error);
  CHECK_THROWS_WITH_AS(parse_calib("entropy"), doctest::Contains("not one of minmax, percentile, mse"), std::runtime_error);
}

TEST_CASE("Class A/B/C positions of a merged kernel on hand-built 4->4 blocks, groups 1 and 2") {
  for (int groups : {1, 2}) {
    CAPTURE(groups);
    const int per_group = 4 / groups;
    const std::vector<TapClass> c = tap_classes(4, per_group, true);
    REQUIRE(c.size() == (size_t)(4 * per_group * 9));
    int count[3] = {0, 0, 0};
    for (TapClass t : c) count[(int)t]++;
    CHECK(count[0] == 4);                  // A: one identity tap per output channel
    CHECK(count[1] == 4 * per_group - 4);  // B: the other centre taps
    CHECK(count[2] == 4 * per_group * 8);  // C: the non-centre taps
    // A is exactly where the identity kernel is 1
    const std::vector<float> id = layers::identity_kernel(4, groups).to_vector();
    for (size_t k = 0; k < c.size(); k++) {
      CHECK((c[k] == TapClass::A) == (id[k] == 1.0f));
      CHECK((c[k] == TapClass::C) == (k % 9 != 4));
    }
    // [i, i % (in/groups), 1, 1]
    for (int o = 0; o < 4; o++) CHECK(c[(o * per_group + o % per_group) * 9 + 4] == TapClass::A);
    // without an identity branch every centre tap is B
    const std::vector<TapClass> n = tap_classes(4, per_group, false);
    CHECK(std::count(n.begin(), n.end(), TapClass::A) == 0);
    CHECK(std::count(n.begin(), n.end(), TapClass::B) == 4 * per_group);
  }
}

TEST_CASE("kernel_stats and the identity-BN scale on a hand-built block with a large identity gamma") {
  for (int groups : {1, 2}) {
    Rng rng(6);
    layers::RepVGGBlock block(4, 4, 1, groups, rng);
    block.eval();
    block.rbr_identity->weight.fill_(8.0f);  // the outlier source: the identity BN's gamma
    CHECK(*identity_bn_max_scale(block) == doctest::Approx(8.0f / std::sqrt(1.0f + 1e-5f)));
    block.switch_to_deploy();
    CHECK(!identity_bn_max_scale(block));  // deploy form: no BN left
    const Tensor k = block.rbr_reparam->weight;
    const KernelStats s = kernel_stats(k, true);
    const std::vector<float> w = k.to_vector();
    const std::vector<TapClass> c = tap_classes(4, 4 / groups, true);
    double sum[3] = {0, 0, 0}, mean = 0, max_abs = 0;
    for (size_t i = 0; i < w.size(); i++) {
      sum[(int)c[i]] += std::fabs(w[i]);
      mean += w[i] / (double)w.size();
      max_abs = std::max(max_abs, (double)std::fabs(w[i]));
    }
    double ss = 0;
    for (float v : w) ss += (v - mean) * (v - mean);
    CHECK(s.count[0] == 4);
    for (int j = 0; j < 3; j++) CHECK(s.mean_abs[j] == doctest::Approx(sum[j] / (double)s.count[j]));
    CHECK(s.max_abs == doctest::Approx(max_abs));
    CHECK(s.std == doctest::Approx(std::sqrt(ss / (double)(w.size() - 1))));
    CHECK(s.max_over_std == doctest::Approx(max_abs / std::sqrt(ss / (double)(w.size() - 1))));
    CHECK(s.mean_abs[0] > 5 * s.mean_abs[1]);  // Class A carries the identity's 8
    CHECK(s.mean_abs[1] > s.mean_abs[2]);      // B has two branches, C one
  }
  // OABN: the clipped gamma, min(γ, k σ²) with σ² = 1 here
  Rng rng(7);
  layers::RepVGGBlock oabn(4, 4, 1, 1, rng);
  oabn.rbr_identity->weight.fill_(8.0f);
  oabn.rbr_identity->oabn_k = 3;
  CHECK(*identity_bn_max_scale(oabn) == doctest::Approx(3.0f / std::sqrt(1.0f + 1e-5f)));
  layers::RepVGGBlock down(4, 8, 2, 1, rng);
  CHECK(!identity_bn_max_scale(down));
}

// The images of x [N, 3, H, W] as a dataset (label 0), for a loader.
struct TensorImages : data::Dataset {
  Tensor x;
  explicit TensorImages(Tensor t) : x(std::move(t)) {}
  size_t size() const override { return (size_t)x.size(0); }
  int num_classes() const override { return 1; }
  int label(size_t) const override { return 0; }
  int height() const override { return (int)x.size(2); }
  int width() const override { return (int)x.size(3); }
  bool load(size_t i, bool, uint64_t, float* chw) const override {
    const int64_t per = x.numel() / x.size(0);
    std::copy(x.f32() + i * per, x.f32() + (i + 1) * per, chw);
    return true;
  }
};

TEST_CASE("PTQ quantizers: FP32 is the model; weights on the B-bit grid; the affine activation codes; first and last FP32") {
  Rng rng(8);
  models::RepVGG model(models::cifar_config(models::BlockType::repvgg, 8), rng);
  model.forward(engine::rand_normal({4, 3, 16, 16}, 0.0f, 1.0f, rng));  // training-mode statistics
  model.eval();
  model.switch_to_deploy();
  engine::NoGradGuard no_grad;
  const Tensor x = engine::rand_normal({4, 3, 16, 16}, 0.0f, 1.0f, rng);
  std::vector<std::string> names;
  for (const models::QuantLayer& l : model.quant_layers()) names.push_back(l.name);
  const size_t n = names.size();
  CHECK(n == model.blocks().size() + 1);
  CHECK(names.front() == "stage0");
  CHECK(names[1] == "stage1.0");
  CHECK(names.back() == "linear");
  const std::vector<float> ref = model.forward(x).to_vector();

  // calibration: the FP32 model's layer inputs (a one-batch loader of x)
  TensorImages images(x);
  data::Loader loader(images, 4, false, 0, 1);
  const Calibration cal = calibrate(model, loader, 1, CalibMethod::minmax, engine::Device::cpu);
  REQUIRE(cal.observers.size() == n);
  for (auto& o : cal.observers) CHECK(!o.empty());
  CHECK(cal.observers.back().min >= 0.0f);  // the FC's input is pooled ReLU output
  CHECK(model.forward(x).to_vector() == ref);  // the probes are gone

  auto rel_error = [&](const std::vector<float>& got) {
    double num = 0, den = 0;
    for (size_t i = 0; i < ref.size(); i++) {
      num += (got[i] - ref[i]) * (got[i] - ref[i]);
      den += ref[i] * ref[i];
    }
    return std::sqrt(num / den);
  };
  QuantConfig c;
  double err8 = 0, err4 = 0;
  for (int bits : {8, 4}) {
    c.weight_bits = c.act_bits = bits;
    const std::vector<Range> ranges = attach_quantizers(model, c, cal);
    CHECK(ranges.front().hi == 0.0f);  // stage0 FP32
    CHECK(ranges[1].hi == cal.observers[1].max);
    CHECK(!model.blocks().front()->quant.act);
    CHECK(!model.blocks().front()->quant.weight);
    for (size_t i = 1; i + 1 < n; i++) {
      const layers::RepBlock& b = *model.blocks()[i];
      REQUIRE(b.quant.weight);
      REQUIRE(b.quant.act);
      std::set<float> distinct;
      for (float v : b.quant.weight->forward(b.rbr_reparam->weight).to_vector()) distinct.insert(v);
      CHECK((int)distinct.size() <= 2 * symmetric_qmax(bits) + 1);
      // the activation quantizer is ./ptq's affine one: (clamp(round(x/s) + z, 0, 2^B - 1) - z) s
      const AffineQuant a = asymmetric_params(ranges[i].lo, ranges[i].hi, bits);
      CHECK(b.quant.act->step.to_vector()[0] == a.scale);
      CHECK(b.quant.act->zero_point == a.zero_point);
      CHECK(b.quant.act->q_max == asymmetric_qmax(bits));
      for (float v : {-0.3f, 0.0f, 0.37f, 5.0f, 1e3f})
        CHECK(b.quant.act->forward(Tensor::full({1}, v)).item() == fake_quant_asymmetric(v, a));
    }
    (bits == 8 ? err8 : err4) = rel_error(model.forward(x).to_vector());
  }
  CHECK(err8 < 0.1);
  CHECK(err8 < err4);
  // The merged kernels' identity taps are outliers (./inspect's Class A): per-channel scales lose less.
  c.weight_bits = c.act_bits = 8;
  c.granularity = Granularity::channel;
  attach_quantizers(model, c, cal);
  CHECK(model.blocks()[1]->quant.weight->step.numel() == 8);
  CHECK(rel_error(model.forward(x).to_vector()) < err8);
  c.granularity = Granularity::layer;
  c.quantize_first_last = true;
  attach_quantizers(model, c, cal);
  CHECK(model.blocks().front()->quant.act);
  CHECK(model.blocks().front()->quant.act->zero_point > 0);  // stage0's input is signed
  remove_quantizers(model);
  CHECK(model.forward(x).to_vector() == ref);

  models::RepVGG train_form(models::cifar_config(models::BlockType::repvgg, 8), rng);
  CHECK_THROWS_WITH_AS(attach_quantizers(train_form, c, cal), doctest::Contains("not in deploy form"), std::runtime_error);
}
