// OREPA (layers/orepa_block.h, layers::merge_orepa): the merge against the official formulas as plain loops,
// and the block against its six branches run one by one on the feature maps, as the paper draws them (train
// and eval, stride 1 and 2, groups 1 and 2); the merge's gradient check; the block's three modes (branches,
// merged, deploy); against its PyTorch twin (tests/reference/orepa_block_*.safetensors); the orepa-cifar model
// through deploy, one QAT step, and the programs downstream of ./train (shared with every block:
// tests/block_testing.h).
#include <cmath>
#include <numbers>
#include <numeric>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/optim.h"
#include "engine/safetensors.h"
#include "layers/checkpoint.h"
#include "layers/orepa_block.h"
#include "layers/quantizer.h"
#include "models/repvgg.h"
#include "tests/block_testing.h"
#include "tests/gradcheck.h"
#include "tests/model_refs.h"
#include "tests/testing.h"

using namespace engine;
using namespace layers;
using block_testing::kCases;
using block_testing::rel_err;
using block_testing::Case;
using block_testing::Run;
using block_testing::run_block;
using testing_util::check_close;
using testing_util::check_gradients;
using testing_util::check_ref;
using testing_util::randomize_bns;
using testing_util::ref_tensor;

namespace {

constexpr int kE = OREPABlock::kExpand;

// Every branch tensor random (idconv1 too, which the official init zeroes), the fixed ones as the block's.
OrepaWeights random_weights(int64_t in, int64_t out, int groups, Rng& rng) {
  const int64_t ig = in / groups, t = groups <= 4 ? in : 2 * in;
  auto u = [&](const Shape& s) { return rand_uniform(s, -1, 1, rng); };
  return {u({out, ig, 3, 3}), u({out, ig, 1, 1}), orepa_avg(), u({out, ig, 1, 1}), orepa_prior(out),
          u({t, ig, 1, 1}),   orepa_id_tensor(t, ig), u({out, t / groups, 3, 3}), u({out, ig, 1, 1}),
          u({in * kE, 1, 3, 3}), u({out, in * kE / groups, 1, 1}), u({6, out})};
}

// The official weight_gen's einsums as loops: kernel [O, I/g, 3, 3] in double.
std::vector<double> loop_merge(const OrepaWeights& w, int64_t in, int g) {
  const int64_t O = w.origin.size(0), I = in / g, T = w.idconv1.size(0), Tg = T / g, Og = O / g;
  auto at = [](const Tensor& t, std::initializer_list<int64_t> idx) {
    int64_t flat = 0, d = 0;
    for (int64_t i : idx) flat = flat * t.size(d++) + i;
    return (double)t.f32()[flat];
  };
  std::vector<double> k(O * I * 9);
  for (int64_t o = 0; o < O; o++) {
    const int64_t c = o / Og, op = o % Og;
    auto v = [&](int b) { return at(w.vector, {b, o}); };
    for (int64_t i = 0; i < I; i++)
      for (int64_t h = 0; h < 3; h++)
        for (int64_t x = 0; x < 3; x++) {
          double s = v(0) * at(w.origin, {o, i, h, x});
          s += v(1) * at(w.avg_conv, {o, i, 0, 0}) * at(w.avg_avg, {h, x});
          s += v(2) * at(w.pfir_conv, {o, i, 0, 0}) * at(w.prior, {o, h, x});
          double kxk = 0;
          for (int64_t t = 0; t < Tg; t++)
            kxk += at(w.conv2, {o, t, h, x}) * (at(w.idconv1, {c * Tg + t, i, 0, 0}) + at(w.id_tensor, {c * Tg + t, i, 0, 0}));
          s += v(3) * kxk;
          if (h == 1 && x == 1) s += v(4) * at(w.conv_1x1, {o, i, 0, 0});
          double dws = 0;
          for (int64_t e = 0; e < kE; e++)
            dws += at(w.gconv_pw, {op * g + c, i * kE + e, 0, 0}) * at(w.gconv_dw, {(c * I + i) * kE + e, 0, h, x});
          s += v(5) * dws;
          k[((o * I + i) * 3 + h) * 3 + x] = s;
        }
  }
  return k;
}

// A block with every branch live: the official init zeroes idconv1 and the prior's row of `vector`.
std::shared_ptr<OREPABlock> make_orepa(int in, int out, int stride, int groups, uint64_t seed) {
  Rng rng(seed);
  auto b = std::make_shared<OREPABlock>(in, out, stride, groups, rng);
  b->weight_orepa_1x1_kxk_idconv1.copy_(rand_uniform(b->weight_orepa_1x1_kxk_idconv1.shape(), -0.3f, 0.3f, rng));
  b->vector.copy_(rand_uniform(b->vector.shape(), 0.2f, 1.0f, rng));
  randomize_bns(*b, seed + 1);
  return b;
}

// The block's branch sum before its BN, each branch run on the feature maps as the paper draws it:
//   origin   3x3 conv                          avg      1x1 conv, then 3x3 average pooling (padding 1)
//   prior    1x1 conv, then each channel's     1x1-kxk  1x1 conv (idconv1 + id_tensor), then 3x3 conv
//            prior filter (depthwise 3x3)      1x1      1x1 conv
//   dws      depthwise 3x3, E filters per channel, then the 1x1 conv, its rows in the official order
// each times its row of `vector` [O], summed. The stride is the last spatial op's.
Tensor branch_sum(const OREPABlock& b, const Tensor& x) {
  const int s = b.stride, g = b.groups, O = b.out_channels, I = b.in_channels;
  const Tensor avg = Tensor::full({O, 1, 3, 3}, 1.0f / 9.0f), prior = reshape(b.weight_orepa_prior, {O, 1, 3, 3});
  const Tensor kxk1 = add(b.weight_orepa_1x1_kxk_idconv1, b.id_tensor);
  // pw row c O/g + o' is the official o' g + c
  const Tensor& pw = b.weight_orepa_gconv_pw;
  const int64_t k = pw.size(1), Og = O / g;
  std::vector<float> perm(pw.numel());
  const std::vector<float> pv = pw.to_vector();
  for (int64_t c = 0; c < g; c++)
    for (int64_t op = 0; op < Og; op++)
      for (int64_t j = 0; j < k; j++) perm[(c * Og + op) * k + j] = pv[(op * g + c) * k + j];
  const Tensor pw_rows = Tensor::from_vector(perm, pw.shape());
  const std::vector<Tensor> ys = {
      conv2d(x, b.weight_orepa_origin, Tensor(), s, 1, g),
      conv2d(conv2d(x, b.weight_orepa_avg_conv, Tensor(), 1, 0, g), avg, Tensor(), s, 1, O),
      conv2d(conv2d(x, b.weight_orepa_pfir_conv, Tensor(), 1, 0, g), prior, Tensor(), s, 1, O),
      conv2d(conv2d(x, kxk1, Tensor(), 1, 0, g), b.weight_orepa_1x1_kxk_conv2, Tensor(), s, 1, g),
      conv2d(x, b.weight_orepa_1x1, Tensor(), s, 0, g),
      conv2d(conv2d(x, b.weight_orepa_gconv_dw, Tensor(), s, 1, I), pw_rows, Tensor(), 1, 0, g)};
  const std::vector<float> v = b.vector.to_vector();
  Tensor sum;
  for (int br = 0; br < 6; br++) {
    const Tensor scale = Tensor::from_vector(std::vector<float>(v.begin() + br * O, v.begin() + (br + 1) * O), {1, O, 1, 1});
    const Tensor y = mul(to_plain(ys[br]), scale);
    sum = br == 0 ? y : add(sum, y);
  }
  return sum;
}

// ReLU(BN(z)) with batch statistics (biased variance) or the running ones, in double.
std::vector<double> bn_relu(const Tensor& z, const BatchNorm2d& bn, bool batch) {
  const int64_t n = z.size(0), c = z.size(1), hw = z.size(2) * z.size(3);
  const std::vector<float> zv = z.to_vector(), g = bn.weight.to_vector(), be = bn.bias.to_vector(),
                           rm = bn.running_mean.to_vector(), rv = bn.running_var.to_vector();
  std::vector<double> y(zv.size());
  for (int64_t ch = 0; ch < c; ch++) {
    double mean = rm[ch], var = rv[ch];
    if (batch) {
      double s = 0, s2 = 0;
      for (int64_t i = 0; i < n; i++)
        for (int64_t p = 0; p < hw; p++) s += zv[(i * c + ch) * hw + p];
      mean = s / (n * hw);
      for (int64_t i = 0; i < n; i++)
        for (int64_t p = 0; p < hw; p++) s2 += std::pow(zv[(i * c + ch) * hw + p] - mean, 2);
      var = s2 / (n * hw);
    }
    for (int64_t i = 0; i < n; i++)
      for (int64_t p = 0; p < hw; p++) {
        const int64_t at = (i * c + ch) * hw + p;
        y[at] = std::max(0.0, (zv[at] - mean) / std::sqrt(var + bn.eps) * g[ch] + be[ch]);
      }
  }
  return y;
}

}  // namespace

// --- the merge ------------------------------------------------------------------------------------------

TEST_CASE("merge_orepa: the six scaled branches against the official einsums as plain loops, groups 1 and 2") {
  for (int g : {1, 2}) {
    INFO("groups " << g);
    Rng rng(4 + g);
    const int64_t in = 4, out = 6;
    const OrepaWeights w = random_weights(in, out, g, rng);
    const Tensor k = merge_orepa(w, g);
    REQUIRE(k.shape() == Shape{out, in / g, 3, 3});
    const std::vector<double> loops = loop_merge(w, in, g);
    check_close(k.to_vector(), loops, 1e-5, 1e-6, "kernel");
    MESSAGE("merge_orepa against the loops, groups " << g << ": max relative error "
                                                     << rel_err(k.to_vector(), std::vector<float>(loops.begin(), loops.end())));
  }
  // the fixed tensors as the official constructor makes them
  const std::vector<float> prior = orepa_prior(4).to_vector();
  CHECK(prior[0] == doctest::Approx(std::cos(std::numbers::pi * 0.5 / 3)));                // channel 0 (first half): along h
  CHECK(prior[(3 * 3 + 0) * 3 + 2] == doctest::Approx(std::cos(std::numbers::pi * 2.5 * 2 / 3)));  // channel 3: along w, i + 1 − 2
  const std::vector<float> id = orepa_id_tensor(8, 4).to_vector();
  CHECK(id[5 * 4 + 1] == 1.0f);
  CHECK(std::accumulate(id.begin(), id.end(), 0.0f) == 8.0f);
  // shapes that do not fit are refused, naming the tensor
  Rng rng(1);
  OrepaWeights w = random_weights(4, 6, 1, rng);
  w.gconv_pw = rand_uniform({6, 3, 1, 1}, -1, 1, rng);
  CHECK_THROWS_WITH_AS(merge_orepa(w, 1), doctest::Contains("pointwise kernel"), std::runtime_error);
  w = random_weights(4, 6, 1, rng);
  w.vector = rand_uniform({5, 6}, -1, 1, rng);
  CHECK_THROWS_WITH_AS(merge_orepa(w, 1), doctest::Contains("scaling vectors"), std::runtime_error);
}

// The tensors of OrepaWeights as a list (the fixed ones included: the check sees their gradients too).
static std::vector<Tensor> as_list(const OrepaWeights& w) {
  return {w.origin, w.avg_conv, w.avg_avg, w.pfir_conv, w.prior, w.idconv1, w.id_tensor,
          w.conv2,  w.conv_1x1, w.gconv_dw, w.gconv_pw, w.vector};
}
static OrepaWeights from_list(const std::vector<Tensor>& in) {
  return {in[0], in[1], in[2], in[3], in[4], in[5], in[6], in[7], in[8], in[9], in[10], in[11]};
}

TEST_CASE("merge_orepa is differentiable: a gradient check over every branch tensor, which a wrong pad backward fails") {
  const char* names[] = {"origin", "avg_conv", "avg_avg", "pfir_conv", "prior", "idconv1", "id_tensor",
                         "conv2",  "1x1",      "gconv_dw", "gconv_pw", "vector"};
  for (int g : {1, 2}) {
    INFO("groups " << g);
    Rng rng(5);
    const OrepaWeights w = random_weights(4, 4, g, rng);
    const Tensor x = rand_uniform({1, 4, 5, 5}, -1, 1, rng);
    auto deploy_conv = [&x, g](bool wrong) {
      return [&x, g, wrong](const std::vector<Tensor>& in) {
        OrepaWeights v = from_list(in);
        if (!wrong) return conv2d(x, merge_orepa(v, g), Tensor(), 1, 1, g);
        // the same kernel, the 1x1 branch padded by a pad2d whose backward takes the wrong rows
        const Tensor one_hot = Tensor::from_vector({0, 0, 0, 0, 1, 0}, {6, 1});
        const Tensor scale = reshape(sum(mul(v.vector, one_hot), {0}), {4, 1, 1, 1});
        const Tensor wrong_1x1 = mul(testing_util::pad2d_with_wrong_backward(v.conv_1x1, 1, 0), scale);
        v.conv_1x1 = mul(v.conv_1x1, Tensor::zeros({1}));
        return conv2d(x, add(merge_orepa(v, g), wrong_1x1), Tensor(), 1, 1, g);
      };
    };
    const std::vector<double> e = testing_util::gradient_errors(deploy_conv(false), as_list(w));
    double worst = 0;
    for (size_t i = 0; i < e.size(); i++) {
      INFO(names[i] << ": relative gradient error " << e[i]);
      CHECK(e[i] <= testing_util::GradCheck{}.tolerance);
      worst = std::max(worst, e[i]);
    }
    const std::vector<double> bad = testing_util::gradient_errors(deploy_conv(true), as_list(w));
    MESSAGE("merge_orepa gradient check, groups " << g << ": worst relative error over the 12 tensors " << worst
                                                  << "; the 1x1 kernel through a wrong pad backward " << bad[8]);
    CHECK(bad[8] > 0.5);
    CHECK(bad[0] <= testing_util::GradCheck{}.tolerance);  // the others untouched
    CHECK(bad[10] <= testing_util::GradCheck{}.tolerance);
  }
}

// --- the block ------------------------------------------------------------------------------------------

TEST_CASE("OREPABlock: the official state-dict names and order, init, deploy leaves rbr_reparam") {
  Rng rng(1);
  OREPABlock b(8, 16, 2, 2, rng);
  std::vector<std::string> names;
  for (auto& t : b.state_dict()) names.push_back(t.name);
  CHECK(names == std::vector<std::string>{"weight_orepa_origin", "weight_orepa_avg_conv", "weight_orepa_pfir_conv",
                                          "weight_orepa_1x1", "weight_orepa_1x1_kxk_idconv1", "weight_orepa_1x1_kxk_conv2",
                                          "weight_orepa_gconv_dw", "weight_orepa_gconv_pw", "vector",
                                          "weight_orepa_avg_avg", "id_tensor", "weight_orepa_prior", "bn.weight",
                                          "bn.bias", "bn.running_mean", "bn.running_var"});
  CHECK(b.weight_orepa_1x1_kxk_conv2.shape() == Shape{16, 4, 3, 3});
  CHECK(b.weight_orepa_gconv_dw.shape() == Shape{64, 1, 3, 3});
  CHECK(b.weight_orepa_gconv_pw.shape() == Shape{16, 32, 1, 1});
  float most = 0;
  for (float v : b.weight_orepa_origin.to_vector()) most = std::max(most, std::fabs(v));
  CHECK(most <= std::sqrt(6.0f / 36));  // kaiming_uniform_(a=0): U(±sqrt(6 / fan_in)), fan_in 4 · 9
  CHECK(most > 0.8f * std::sqrt(6.0f / 36));
  for (float v : b.weight_orepa_1x1_kxk_idconv1.to_vector()) CHECK(v == 0.0f);
  const std::vector<float> v = b.vector.to_vector();
  CHECK(std::vector<float>{v[0], v[16], v[32], v[48], v[64], v[80]} == std::vector<float>{0.25f, 0.25f, 0, 0.5f, 1, 0.5f});
  CHECK(OREPABlock(8, 8, 1, 8, rng).weight_orepa_1x1_kxk_conv2.shape() == Shape{8, 2, 3, 3});  // T = 2 I past 4 groups
  b.switch_to_deploy();
  names.clear();
  for (auto& t : b.state_dict()) names.push_back(t.name);
  CHECK(names == std::vector<std::string>{"rbr_reparam.weight", "rbr_reparam.bias"});
  CHECK(b.bn == nullptr);
  CHECK_FALSE(b.vector.defined());
}

TEST_CASE("OREPABlock against its six branches run one by one on the feature maps, then the BN: training and eval") {
  double worst = 0;
  for (const Case& c : kCases)
    for (bool training : {true, false}) {
      INFO(c.name << (training ? ", training" : ", eval"));
      auto b = make_orepa(c.in, c.out, c.stride, c.groups, 11);
      b->train(training);
      Rng rng(3);
      const Tensor x = rand_uniform({2, c.in, 7, 7}, -1, 2, rng);
      NoGradGuard no_grad;
      const std::vector<double> expected = bn_relu(branch_sum(*b, x), *b->bn, training);
      const std::vector<float> y = b->forward(x).to_vector();
      check_close(y, expected, 1e-4, 1e-5, "output");
      worst = std::max(worst, rel_err(y, std::vector<float>(expected.begin(), expected.end())));
    }
  MESSAGE("OREPA block against its branches one by one, max |y − y_branches| / max |y_branches|: " << worst);
}

TEST_CASE("OREPABlock in eval: the training form, merged mode and the deploy conv agree") {
  const auto [deploy, merged] = block_testing::check_eval_modes(make_orepa);
  MESSAGE("OREPA eval, max |y − y_train_form| / max |y_train_form|: deploy " << deploy << ", merged " << merged);}

TEST_CASE("OREPABlock in training: merged mode with batch folding is the training form: output, every gradient, running statistics") {
  // 8 kernels, vector, the BN's γ and β; the three fixed tensors, the BN's running statistics
  const auto [y, g] = block_testing::check_merged_training(make_orepa, 11, 5);
  MESSAGE("OREPA training, merged (RepQ-BN) against the training form, max relative error: output " << y << ", gradients " << g);}

TEST_CASE("OREPABlock, RepQ-BNEst: the BN's running mean moves by the Eq. 5 estimate of the merged kernel") {
  auto b = make_orepa(8, 8, 1, 2, 7);
  b->switch_to_merged(BnFold::estimated);
  Rng rng(2);
  const Tensor x = rand_uniform({2, 8, 6, 6}, 0, 2, rng);
  const std::vector<float> before = b->bn->running_mean.to_vector();
  const Run r = run_block(*b, x, rand_uniform({2, 8, 6, 6}, -1, 1, rng));
  for (const Tensor& g : r.grads) CHECK(g.defined());
  Moments m;
  {
    NoGradGuard no_grad;
    m = estimate_moments(channel_moments(x), b->merged_kernel(), Tensor(), 2);
  }
  std::vector<double> expected(8);  // running = 0.9 running + 0.1 estimate
  for (int i = 0; i < 8; i++) expected[i] = 0.9 * before[i] + 0.1 * m.mean.f32()[i];
  check_close(b->bn->running_mean.to_vector(), expected, 1e-5, 1e-6, "bn running mean");
}

// --- against PyTorch ------------------------------------------------------------------------------------

TEST_CASE("OREPABlock matches its PyTorch twin (the official OREPA): 8->8 stride 1, and 8->16 stride 2 groups 2") {
  const auto make_block = [](int in, int out, int stride, int groups) {
    Rng rng(0);
    return std::make_unique<OREPABlock>(in, out, stride, groups, rng);
  };
  for (const char* file : {"orepa_block_s1.safetensors", "orepa_block_s2g2.safetensors"})
    for (bool merged : {false, true}) {
      const std::string what = std::string(file) + (merged ? ", merged mode (RepQ-BN fold)" : ", training form");
      INFO(what);
      const double worst = block_testing::check_against_twin(file, merged, make_block);
      MESSAGE(what << ": worst tensor max|ours − PyTorch| / max|PyTorch| " << worst);
    }
}

// --- the model ------------------------------------------------------------------------------------------

TEST_CASE("orepa-cifar at width 8: parameter counts, and its deploy form gives the train form's eval output") {
  CHECK(models::cifar_config(models::BlockType::orepa, 8).name == "orepa-cifar");
  CHECK(models::arch_config("orepa-a0").block == models::BlockType::orepa);
  const double e = block_testing::check_cifar_deploy(models::BlockType::orepa);
  MESSAGE("orepa-cifar width 8, deploy against train-form eval logits: " << e);
}

TEST_CASE("orepa-cifar at width 8: a RepQ-BN step reaches every branch and step; eval logits equal the deploy form's") {
  const models::ArchConfig arch = models::cifar_config(models::BlockType::orepa, 8);
  Rng r1(4);
  models::RepVGG m(arch, r1);
  randomize_bns(m, 9);
  m.set_qat({models::QatMethod::repq_bn, 4, 8, true, false, StepInit::min_error});
  Rng rng(8);
  const Tensor x = rand_uniform({4, 3, 32, 32}, -1, 1, rng);
  Tensor labels = Tensor::empty({4}, DType::i32);
  for (int i = 0; i < 4; i++) labels.data<int32_t>()[i] = i;
  std::vector<Tensor> ps;
  for (auto& p : m.parameters()) ps.push_back(p.tensor);
  SGD sgd({ParamGroup{ps, 0.0f}}, 0.01f, 0.9f);
  Tensor loss = cross_entropy(m.forward(x), labels);
  CHECK(std::isfinite(loss.item()));
  loss.backward();
  int branch_tensors = 0;
  for (auto& p : m.parameters()) {
    INFO(p.name);
    REQUIRE(p.tensor.grad().defined());
    double norm = 0;
    for (float g : p.tensor.grad().to_vector()) norm += (double)g * g;
    // every block's branch tensors (the prior's row of vector is 0 at init: its pfir_conv gets no gradient)
    if ((p.name.find("weight_orepa_") != std::string::npos && !p.name.ends_with("pfir_conv")) ||
        p.name.ends_with(".vector") || p.name.ends_with("weight_quant.step")) {
      CHECK(norm > 0);
      branch_tensors++;
    }
  }
  CHECK(branch_tensors == 26 * 8 + 25);  // 26 blocks' 7 branch kernels and vector; the 25 quantized ones' weight step
  sgd.step();
  m.eval();
  NoGradGuard no_grad;
  const Tensor eval_logits = m.forward(x);
  m.switch_to_deploy();
  check_close(m.forward(x).to_vector(), eval_logits.to_vector(), 1e-4, 1e-5, "deploy");
}

// The programs take the arch unchanged (tests/block_testing.h).
TEST_CASE("orepa-cifar through ./train, every --qat method, ./ptq --export, ./infer, ./inspect, ./export --onnx and --qdq") {
  block_testing::check_programs("orepa-cifar", "stage1.0.weight_orepa_gconv_pw");
}
