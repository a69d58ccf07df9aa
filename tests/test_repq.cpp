// RepQ (layers/bn_fold.h, layers/quantizer.h, the blocks' merged mode): merged mode against the branches
// (values, every gradient, running statistics), BNEst's Eq. 5-6 against double loops and against the
// true statistics, LSQ against its scalar reference and closed-form gradients.
#include <cmath>
#include <filesystem>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/optim.h"
#include "engine/safetensors.h"
#include "layers/checkpoint.h"
#include "layers/bn_fold.h"
#include "layers/quantizer.h"
#include "layers/repvgg_block.h"
#include "models/repvgg.h"
#include "tests/block_testing.h"
#include "tests/gradcheck.h"
#include "tests/model_refs.h"
#include "tests/testing.h"

using namespace engine;
using namespace layers;
using testing_util::check_close;
using testing_util::check_gradients;
using block_testing::Run;
using block_testing::run_block;
using testing_util::randomize_bns;

static std::shared_ptr<RepBlock> make_block(bool qa, int in, int out, int stride, int groups, uint64_t seed) {
  Rng rng(seed);
  std::shared_ptr<RepBlock> b;
  if (qa) b = std::make_shared<QARepVGGBlock>(in, out, stride, groups, rng);
  else b = std::make_shared<RepVGGBlock>(in, out, stride, groups, rng);
  randomize_bns(*b, seed + 1);
  return b;
}

TEST_CASE("merged mode with batch folding is the 3-branch block: output, every gradient, running statistics") {
  struct Case {
    const char* name;
    bool qa;
    int in, out, stride, groups;
  };
  for (const Case& c : {Case{"RepVGG 8->8 with identity", false, 8, 8, 1, 1}, Case{"RepVGG 8->16 no identity", false, 8, 16, 1, 1},
                        Case{"RepVGG 8->16 stride 2", false, 8, 16, 2, 1}, Case{"RepVGG 8->8 groups 2", false, 8, 8, 1, 2},
                        Case{"QARepVGG 8->8", true, 8, 8, 1, 1}, Case{"QARepVGG 8->16 stride 2 groups 2", true, 8, 16, 2, 2}}) {
    INFO(c.name);
    auto branches = make_block(c.qa, c.in, c.out, c.stride, c.groups, 11);
    auto merged = make_block(c.qa, c.in, c.out, c.stride, c.groups, 11);
    merged->switch_to_merged(BnFold::batch);
    CHECK(merged->mode() == BlockMode::merged);
    Rng rng(3);
    const int64_t side = (7 - 1) / c.stride + 1;
    Tensor x = rand_uniform({4, c.in, 7, 7}, -1, 2, rng), w = rand_uniform({4, c.out, side, side}, -1, 1, rng);
    const Run a = run_block(*branches, x, w), b = run_block(*merged, x, w);
    check_close(b.y.to_vector(), a.y.to_vector(), 1e-4, 1e-5, "output");
    check_close(b.gx.to_vector(), a.gx.to_vector(), 1e-3, 1e-5, "input gradient");
    const auto params = branches->parameters();
    REQUIRE(a.grads.size() == b.grads.size());
    for (size_t i = 0; i < a.grads.size(); i++)
      check_close(b.grads[i].to_vector(), a.grads[i].to_vector(), 1e-3, 1e-5, params[i].name);
    const auto bufs_a = branches->buffers(), bufs_b = merged->buffers();
    for (size_t i = 0; i < bufs_a.size(); i++)
      check_close(bufs_b[i].tensor.to_vector(), bufs_a[i].tensor.to_vector(), 1e-5, 1e-6, bufs_a[i].name);
  }
}

TEST_CASE("merged mode in blocks of 8 and 16: the NCHW output, gradients and running statistics") {
  struct Case {
    const char* name;
    bool qa;
    int in, out, stride, groups;
  };
  for (BnFold fold : {BnFold::batch, BnFold::estimated})
    for (const Case& c : {Case{"RepVGG 16->16 with identity", false, 16, 16, 1, 1}, Case{"RepVGG 16->32 stride 2", false, 16, 32, 2, 1},
                          Case{"RepVGG 32->32 groups 2", false, 32, 32, 1, 2}, Case{"QARepVGG 16->16", true, 16, 16, 1, 1}}) {
     for (int64_t block : {8, 16}) {
      INFO(c.name, fold == BnFold::batch ? ", RepQ-BN" : ", RepQ-BNEst", ", block ", block);
      std::shared_ptr<RepBlock> blocks[2];
      Run runs[2];
      Rng rng(8);
      const int64_t side = (6 - 1) / c.stride + 1;
      const Tensor x = rand_uniform({2, c.in, 6, 6}, 0, 2, rng), w = rand_uniform({2, c.out, side, side}, -1, 1, rng);
      for (int blocked = 0; blocked < 2; blocked++) {
        blocks[blocked] = make_block(c.qa, c.in, c.out, c.stride, c.groups, 21);
        blocks[blocked]->switch_to_merged(fold);
        blocks[blocked]->quant.set(std::make_shared<Quantizer>(4, Codes::unsigned_act),
                                        std::make_shared<Quantizer>(4, Codes::weight, c.out));
        if (!blocked) {
          BlockGuard plain(0);
          runs[0] = run_block(*blocks[0], x, w);
          continue;
        }
        BlockGuard guard(block);
        Tensor xb = x.clone();  // the gradient of x through to_layout
        xb.requires_grad_(true);
        runs[1].y = blocks[1]->forward(to_layout(xb, block));
        REQUIRE(runs[1].y.channel_block() == block);
        sum_all(mul(runs[1].y, w)).backward();
        runs[1].gx = xb.grad();
        for (auto& p : blocks[1]->parameters()) runs[1].grads.push_back(p.tensor.grad());
      }
      // each layout runs its own oneDNN kernels (float sums in another order): within float rounding
      check_close(runs[1].y.to_vector(), runs[0].y.to_vector(), 1e-4, 1e-5, "output");
      check_close(runs[1].gx.to_vector(), runs[0].gx.to_vector(), 1e-4, 1e-5, "input gradient");
      const auto params = blocks[0]->parameters();
      REQUIRE(runs[0].grads.size() == runs[1].grads.size());
      for (size_t i = 0; i < params.size(); i++)
        check_close(runs[1].grads[i].to_vector(), runs[0].grads[i].to_vector(), 1e-4, 1e-5, params[i].name);
      const auto bufs_a = blocks[0]->buffers(), bufs_b = blocks[1]->buffers();
      for (size_t i = 0; i < bufs_a.size(); i++)
        check_close(bufs_b[i].tensor.to_vector(), bufs_a[i].tensor.to_vector(), 1e-5, 1e-6, bufs_a[i].name);
     }
    }
}

TEST_CASE("merged mode in eval (running statistics) gives the deploy conv's output; with quantizers too") {
  for (bool qa : {false, true}) {
    auto merged = make_block(qa, 8, 8, 1, 2, 5);
    merged->switch_to_merged(BnFold::batch);
    merged->quant.set(std::make_shared<Quantizer>(4, Codes::unsigned_act), std::make_shared<Quantizer>(4, Codes::weight, 8));
    Rng rng(6);
    Tensor x = rand_uniform({2, 8, 6, 6}, 0, 2, rng);
    merged->forward(x);  // training: the quantizers initialize, the running statistics move
    merged->eval();
    NoGradGuard no_grad;
    const Tensor y = merged->forward(x);
    merged->switch_to_deploy();
    CHECK(merged->mode() == BlockMode::deploy);
    REQUIRE(merged->quant.act);
    check_close(merged->forward(x).to_vector(), y.to_vector(), 1e-5, 1e-6, qa ? "QARepVGG" : "RepVGG");
  }
}

TEST_CASE("merged mode folds what its BN source says: running statistics in training differ from batch ones") {
  auto batch = make_block(false, 8, 8, 1, 1, 2), running = make_block(false, 8, 8, 1, 1, 2);
  batch->switch_to_merged(BnFold::batch);
  running->switch_to_merged(BnFold::running);
  Rng rng(1);
  Tensor x = rand_uniform({2, 8, 5, 5}, -1, 3, rng);
  const auto a = batch->forward(x).to_vector(), b = running->forward(x).to_vector();
  double diff = 0;
  for (size_t i = 0; i < a.size(); i++) diff = std::max(diff, (double)std::fabs(a[i] - b[i]));
  CHECK(diff > 0.1);
}

// A narrow model: the branches, or every block merged with batch folding (no quantizers), one SGD step.
TEST_CASE("a whole model in merged mode takes the same SGD step as in branches mode") {
  for (auto type : {models::BlockType::repvgg, models::BlockType::qarepvgg}) {
    models::ArchConfig arch = models::cifar_config(type, 16);
    Rng r1(4), r2(4);
    models::RepVGG a(arch, r1), b(arch, r2);
    randomize_bns(a, 9);
    randomize_bns(b, 9);
    for (auto& blk : b.blocks()) blk->switch_to_merged(BnFold::batch);
    Rng rng(8);
    Tensor x = rand_uniform({4, 3, 32, 32}, -1, 1, rng);  // smaller inputs leave BNs of 4 values, too ill-conditioned to compare
    Tensor labels = Tensor::empty({4}, DType::i32);
    for (int i = 0; i < 4; i++) labels.data<int32_t>()[i] = i;
    for (models::RepVGG* m : {&a, &b}) {
      std::vector<Tensor> ps;
      for (auto& p : m->parameters()) ps.push_back(p.tensor);
      SGD sgd({ParamGroup{ps, 1e-4f}}, 0.1f, 0.9f);
      cross_entropy(m->forward(x), labels).backward();
      sgd.step();
    }
    const auto sa = a.state_dict(), sb = b.state_dict();
    REQUIRE(sa.size() == sb.size());
    for (size_t i = 0; i < sa.size(); i++) {
      REQUIRE(sa[i].name == sb[i].name);
      check_close(sb[i].tensor.to_vector(), sa[i].tensor.to_vector(), 1e-3, 5e-5, sa[i].name);
    }
  }
}

// --- BNEst ------------------------------------------------------------------------------------------

static std::vector<double> ref_estimate(const std::vector<float>& mx, const std::vector<float>& vx, const Tensor& k,
                                        const std::vector<float>& bias, int groups, bool var) {
  const int64_t o = k.size(0), per = k.size(1), taps = k.size(2) * k.size(3);
  const float* w = k.f32();
  std::vector<double> out(o);
  for (int64_t oc = 0; oc < o; oc++) {
    const int64_t g = oc / (o / groups);
    double acc = 0;
    for (int64_t i = 0; i < per; i++) {
      double s = 0;
      for (int64_t t = 0; t < taps; t++) {
        const double v = w[(oc * per + i) * taps + t];
        s += var ? v * v : v;
      }
      acc += (var ? vx : mx)[g * per + i] * s;
    }
    out[oc] = acc + (var || bias.empty() ? 0.0 : bias[oc]);
  }
  return out;
}

TEST_CASE("BNEst Eq. 5-6 against double loops, groups 1, 2 and 4, with and without bias; gradient check") {
  Rng rng(12);
  for (int groups : {1, 2, 4}) {
    Tensor k = rand_uniform({8, 8 / groups, 3, 3}, -1, 1, rng), bias = rand_uniform({8}, -1, 1, rng);
    Moments m{rand_uniform({8}, -1, 1, rng), rand_uniform({8}, 0.1f, 2, rng)};
    for (bool with_bias : {false, true}) {
      Moments e = estimate_moments(m, k, with_bias ? bias : Tensor(), groups);
      const auto b = with_bias ? bias.to_vector() : std::vector<float>{};
      check_close(e.mean.to_vector(), ref_estimate(m.mean.to_vector(), m.var.to_vector(), k, b, groups, false), 1e-5, 1e-6, "E");
      check_close(e.var.to_vector(), ref_estimate(m.mean.to_vector(), m.var.to_vector(), k, b, groups, true), 1e-5, 1e-6, "V");
    }
    check_gradients([groups](auto& in) {
      Moments e = estimate_moments({in[0], in[1]}, in[2], in[3], groups);
      return add(e.mean, mul_scalar(e.var, 0.5f));
    }, {m.mean, m.var, k, bias});
  }
}

TEST_CASE("BNEst: with independent input channels, the estimate is the true output statistics within sampling error") {
  Rng rng(13);
  const int64_t n = 64, c = 4, side = 16;
  // x[:, i] ~ U(a_i, b_i) independently for every element: E = (a+b)/2, V = (b-a)²/12
  std::vector<float> lo = {-1, 0, 0.5f, -2}, hi = {1, 2, 1.5f, 0};
  Tensor x = Tensor::empty({n, c, side, side});
  for (int64_t i = 0; i < x.numel(); i++) {
    const int64_t ch = i / (side * side) % c;
    x.f32()[i] = lo[ch] + (hi[ch] - lo[ch]) * rng.uniform();
  }
  Tensor k = rand_uniform({6, c, 3, 3}, -0.5f, 0.5f, rng);
  const Moments truth = channel_moments(conv2d(x, k, Tensor(), 1, 0, 1));  // no padding: Eq. 5-6 ignore it
  const Moments est = estimate_moments(channel_moments(x), k, Tensor(), 1);
  const auto tm = truth.mean.to_vector(), tv = truth.var.to_vector(), em = est.mean.to_vector(), ev = est.var.to_vector();
  for (int o = 0; o < 6; o++) {
    INFO("channel " << o << ": mean " << em[o] << " vs " << tm[o] << ", var " << ev[o] << " vs " << tv[o]);
    CHECK(std::fabs(em[o] - tm[o]) <= 0.02 * std::sqrt(tv[o]));  // a mean over ~12k correlated values
    CHECK(std::fabs(ev[o] - tv[o]) <= 0.05 * tv[o]);
  }
}

TEST_CASE("channel_moments: mean and biased variance per channel against double loops, and its gradient") {
  Rng rng(14);
  Tensor x = rand_uniform({3, 5, 4, 6}, -1, 3, rng);
  std::vector<double> mean(5, 0), var(5, 0);
  const float* p = x.f32();
  const int64_t per = 3 * 24;
  for (int64_t i = 0; i < x.numel(); i++) mean[i / 24 % 5] += p[i] / (double)per;
  for (int64_t i = 0; i < x.numel(); i++) var[i / 24 % 5] += std::pow(p[i] - mean[i / 24 % 5], 2) / (double)per;
  const Moments m = channel_moments(x);
  check_close(m.mean.to_vector(), mean, 1e-5, 1e-6, "mean");
  check_close(m.var.to_vector(), var, 1e-4, 1e-6, "var");
  check_gradients([](auto& in) {
    const Moments m = channel_moments(in[0]);
    return add(m.mean, m.var);
  }, {x});
}

// --- LSQ --------------------------------------------------------------------------------------------

TEST_CASE("LSQ quantizer: forward against the scalar reference, codes in range, per channel") {
  Rng rng(15);
  for (Codes codes : {Codes::weight, Codes::unsigned_act, Codes::signed_act})
    for (int bits : {2, 4, 8}) {
      const int64_t channels = codes == Codes::weight ? 3 : 1;
      Quantizer q(bits, codes, channels);
      std::vector<float> steps = {0.05f, 0.11f, 0.3f};
      steps.resize(channels);
      q.set_step(steps);
      Tensor x = rand_uniform({3, 4, 5, 5}, -3, 3, rng);
      const auto y = q.forward(x).to_vector(), xv = x.to_vector();
      const int per = 100;
      for (size_t i = 0; i < xv.size(); i++) {
        const float s = steps[channels == 1 ? 0 : i / per];
        const float code = y[i] / s;
        REQUIRE(y[i] == doctest::Approx(fake_quant(xv[i], s, 0, q.q_min, q.q_max)).epsilon(1e-6));
        CHECK(std::fabs(code - std::nearbyint(code)) < 1e-3);
        CHECK(std::nearbyint(code) >= q.q_min);
        CHECK(std::nearbyint(code) <= q.q_max);
      }
    }
  CHECK(Quantizer(4, Codes::weight).q_min == -7);
  CHECK(Quantizer(4, Codes::weight).q_max == 7);
  CHECK(Quantizer(4, Codes::unsigned_act).q_max == 15);
  CHECK(Quantizer(4, Codes::signed_act).q_min == -8);
  CHECK_THROWS_WITH_AS(Quantizer(1, Codes::weight), doctest::Contains("outside 2..16"), std::runtime_error);
  CHECK_THROWS_WITH_AS(Quantizer(17, Codes::weight), doctest::Contains("outside 2..16"), std::runtime_error);
}

TEST_CASE("eval_bias: in eval the bias on its int32 grid of step s_x * s_w (per tensor, per channel); float in training") {
  Rng rng(21);
  Quantizer act(4, Codes::unsigned_act);
  act.set_step({0.37f});
  for (int64_t channels : {1, 6}) {
    Quantizer weight(4, Codes::weight, channels);
    weight.set_step(channels == 6 ? std::vector<float>{0.013f, 0.05f, 0.021f, 0.2f, 0.0071f, 0.09f} : std::vector<float>{0.031f});
    Tensor b = rand_uniform({6}, -0.5f, 0.5f, rng);
    b.requires_grad_(true);
    const Tensor y = eval_bias(b, &act, &weight, /*training=*/false);
    const std::vector<float> bv = b.to_vector(), yv = y.to_vector(), sw = weight.step.to_vector();
    const BiasCodes c = bias_codes(b, act, weight);
    for (int64_t o = 0; o < 6; o++) {
      const double t = (double)0.37f * sw[channels == 1 ? 0 : o];
      const double code = std::nearbyint(bv[o] / t);
      CHECK(c.codes[o] == (int32_t)code);
      CHECK(yv[o] == doctest::Approx(code * t).epsilon(1e-6));
      CHECK(std::fabs(yv[o] - bv[o]) <= 0.5 * t * (1 + 1e-5));
    }
    sum_all(mul(y, Tensor::full({6}, 2.0f))).backward();  // straight through: d y / d b = 1
    CHECK(b.grad().to_vector() == std::vector<float>(6, 2.0f));
    CHECK(eval_bias(b, &act, &weight, /*training=*/true).to_vector() == bv);
    CHECK(eval_bias(b, &act, nullptr, false).to_vector() == bv);
  }
  Quantizer weight(8, Codes::weight);
  weight.set_step({1e-6f});
  CHECK_THROWS_WITH_AS(bias_codes(Tensor::full({2}, 1e4f), act, weight, "conv.bias"),
                       doctest::Contains("conv.bias[0] = 10000 is beyond int32 codes of step 3.7e-07"), std::runtime_error);

  // In a model, the message names the layer.
  Rng model_rng(3);
  models::RepVGG m(models::cifar_config(models::BlockType::repvgg, 16), model_rng);
  std::vector<models::QuantLayer> layers = m.quant_layers();
  for (const models::QuantLayer& l : layers) CHECK(l.quant->layer == l.name);
  auto tiny = std::make_shared<Quantizer>(8, Codes::weight);
  tiny->set_step({1e-6f});
  auto input = std::make_shared<Quantizer>(8, Codes::unsigned_act);
  input->set_step({0.37f});
  layers[1].quant->set(input, tiny);
  CHECK_THROWS_WITH_AS(layers[1].quant->quantized_bias(Tensor::full({16}, 1e4f), false),
                       doctest::Contains("layer stage1.0 bias[0] = 10000 is beyond int32 codes"), std::runtime_error);
}

TEST_CASE("LSQ quantizer: gradients of x and of the step against LSQ's closed form (Eq. 3), with the scale") {
  Rng rng(16);
  Quantizer q(3, Codes::signed_act);  // codes -4..3
  const float s = 0.25f;
  q.set_step({s});
  Tensor x = rand_uniform({2, 3, 4, 4}, -1.5f, 1.5f, rng), w = rand_uniform({2, 3, 4, 4}, -1, 1, rng);
  x.requires_grad_(true);
  sum_all(mul(q.forward(x), w)).backward();
  const auto xv = x.to_vector(), wv = w.to_vector(), gx = x.grad().to_vector();
  double gs = 0;
  for (size_t i = 0; i < xv.size(); i++) {
    const double v = xv[i] / s;
    const bool below = v < q.q_min - 0.5 + 1e-6 && std::nearbyint(v) < q.q_min, above = std::nearbyint(v) > q.q_max;
    const double dstep = below ? q.q_min : above ? q.q_max : std::nearbyint(v) - v;
    gs += wv[i] * dstep;
    CHECK(gx[i] == doctest::Approx(below || above ? 0.0 : wv[i]));
  }
  gs /= std::sqrt((double)xv.size() * q.q_max);  // the gradient scale g = 1/sqrt(N Q_P)
  CHECK(q.step.grad().to_vector()[0] == doctest::Approx(gs).epsilon(1e-4));
}

TEST_CASE("LSQ quantizer: initialized from the first training batch; min-error keeps outliers, LSQ's rule clips them") {
  // a merged kernel: small taps and a few large identity taps (the outliers OABN is about)
  Rng rng(17);
  Tensor w = rand_uniform({16, 16, 3, 3}, -0.05f, 0.05f, rng);
  for (int i = 0; i < 16; i++) w.f32()[(i * 16 + i) * 9 + 4] = 1.5f;
  Quantizer min_err(8, Codes::weight), lsq(8, Codes::weight, 1, StepInit::lsq);
  CHECK(!min_err.initialized());
  min_err.forward(w);
  lsq.forward(w);
  CHECK(min_err.initialized());
  CHECK(min_err.init_state.to_vector()[0] == 1.0f);
  NoGradGuard no_grad;
  auto outlier_error = [&](Quantizer& q) { return std::fabs(q.forward(w).f32()[4] - 1.5f); };
  CHECK(outlier_error(min_err) < 0.02f);  // within a step of 1.5 / 127
  CHECK(outlier_error(lsq) > 0.5f);       // the range 127 · 2·mean|w|/sqrt(127) ≈ 0.8: the identity taps clip
  Quantizer fresh(8, Codes::weight);
  fresh.eval();
  CHECK_THROWS_WITH_AS(fresh.forward(w), doctest::Contains("before its step was set"), std::runtime_error);
}

// --- a QAT model ------------------------------------------------------------------------------------

TEST_CASE("a QAT model: eval logits equal its deploy form's, and a checkpoint round trip gives them again") {
  for (models::QatMethod method : {models::QatMethod::repq_bn, models::QatMethod::repq_bnest, models::QatMethod::merged}) {
    INFO(models::qat_method_name(method));
    models::ArchConfig arch = models::cifar_config(models::BlockType::repvgg, 16);
    Rng r1(4);
    models::RepVGG m(arch, r1, 3.0f);
    randomize_bns(m, 9);
    m.set_qat({method, 4, 4, true, true, StepInit::min_error});
    Rng rng(8);
    Tensor x = rand_uniform({4, 3, 32, 32}, -1, 1, rng);
    Tensor labels = Tensor::zeros({4}, DType::i32);
    cross_entropy(m.forward(x), labels).backward();  // training: the steps initialize
    m.eval();
    NoGradGuard no_grad;
    const Tensor eval_logits = m.forward(x);

    const std::string path = "/tmp/repq_test_qat_" + std::string(models::qat_method_name(method)) + ".safetensors";
    layers::save_checkpoint(path, m, models::qat_metadata(*m.qat()));
    Rng r2(99);
    models::RepVGG loaded(arch, r2, 3.0f);
    loaded.set_qat(*models::qat_from_metadata(st::load(path).metadata, path));
    layers::load_checkpoint(path, loaded);
    loaded.eval();
    check_close(loaded.forward(x).to_vector(), eval_logits.to_vector(), 1e-6, 1e-6, "reloaded");

    m.switch_to_deploy();
    check_close(m.forward(x).to_vector(), eval_logits.to_vector(), 1e-4, 1e-5, "deploy");
    std::filesystem::remove(path);
  }
}

TEST_CASE("QAT metadata: written and read back; bad values name the file and key") {
  const models::QatConfig c{models::QatMethod::repq_bnest, 4, 6, true, false, StepInit::lsq};
  auto md = models::qat_metadata(c);
  const auto back = models::qat_from_metadata(md, "f.safetensors");
  REQUIRE(back);
  CHECK(back->method == models::QatMethod::repq_bnest);
  CHECK(back->bits == 4);
  CHECK(back->act_bits == 6);
  CHECK(back->per_channel);
  CHECK(back->init == StepInit::lsq);
  CHECK(!models::qat_from_metadata({{"arch", "repvgg-cifar"}}, "f"));
  auto bad = md;
  bad["bits"] = "40";
  CHECK_THROWS_WITH_AS(models::qat_from_metadata(bad, "f.safetensors"), "f.safetensors: metadata: 40 weight bits is outside 2..16",
                       std::runtime_error);
  bad = md;
  bad["qat"] = "magic";
  CHECK_THROWS_WITH_AS(models::qat_from_metadata(bad, "f.safetensors"), doctest::Contains("metadata 'qat' is 'magic'"), std::runtime_error);
  bad = md;
  bad.erase("granularity");
  CHECK_THROWS_WITH_AS(models::qat_from_metadata(bad, "f.safetensors"), doctest::Contains("without metadata 'granularity'"),
                       std::runtime_error);
}
