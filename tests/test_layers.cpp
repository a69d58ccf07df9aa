// The module system, layer initialization, the branch merge (values and gradients), the OABN clip and
// the custom L2 formula, each on its own.
#include <algorithm>
#include <cmath>
#include <set>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "layers/oabn.h"
#include "layers/repvgg_block.h"
#include "models/repvgg.h"
#include "tests/gradcheck.h"
#include "tests/model_refs.h"

using namespace engine;
using namespace layers;
using testing_util::check_close;
using testing_util::check_gradients;
using testing_util::check_ref;
using testing_util::ref_tensor;

static std::vector<std::string> names_of(const std::vector<NamedTensor>& v) {
  std::vector<std::string> out;
  for (auto& t : v) out.push_back(t.name);
  return out;
}

TEST_CASE("module: PyTorch's state-dict names and order, parameter kinds, train/eval reach every child") {
  Rng rng(1);
  RepVGGBlock block(8, 8, 1, 2, rng);
  std::vector<std::string> expected = {
      "rbr_identity.weight", "rbr_identity.bias", "rbr_identity.running_mean", "rbr_identity.running_var",
      "rbr_dense.conv.weight", "rbr_dense.bn.weight", "rbr_dense.bn.bias", "rbr_dense.bn.running_mean",
      "rbr_dense.bn.running_var", "rbr_1x1.conv.weight", "rbr_1x1.bn.weight", "rbr_1x1.bn.bias",
      "rbr_1x1.bn.running_mean", "rbr_1x1.bn.running_var"};
  CHECK(names_of(block.state_dict()) == expected);
  CHECK(names_of(block.buffers()) == std::vector<std::string>{"rbr_identity.running_mean", "rbr_identity.running_var",
                                                              "rbr_dense.bn.running_mean", "rbr_dense.bn.running_var",
                                                              "rbr_1x1.bn.running_mean", "rbr_1x1.bn.running_var"});
  for (auto& p : block.parameters()) {
    CHECK(p.tensor.requires_grad());
    CHECK(p.tensor.is_leaf());
    CHECK(p.kind == (p.name.ends_with("conv.weight") ? ParamKind::weight : ParamKind::bn));
  }
  CHECK(block.rbr_dense->conv->weight.shape() == Shape{8, 4, 3, 3});  // groups 2
  CHECK(block.rbr_1x1->conv->weight.shape() == Shape{8, 4, 1, 1});
  std::set<std::string> modules;
  for (auto& [name, m] : block.modules()) modules.insert(name);
  CHECK(modules == std::set<std::string>{"", "rbr_identity", "rbr_dense", "rbr_dense.conv", "rbr_dense.bn",
                                         "rbr_1x1", "rbr_1x1.conv", "rbr_1x1.bn"});

  block.eval();
  for (auto& [name, m] : block.modules()) CHECK_MESSAGE(!m->training(), name);
  block.train();
  for (auto& [name, m] : block.modules()) CHECK_MESSAGE(m->training(), name);

  RepVGGBlock no_identity(8, 16, 2, 1, rng);
  CHECK(no_identity.rbr_identity == nullptr);
  CHECK(names_of(no_identity.state_dict()).front() == "rbr_dense.conv.weight");

  QARepVGGBlock qa(8, 8, 1, 1, rng);
  CHECK(names_of(qa.state_dict()) == std::vector<std::string>{
                                         "rbr_dense.conv.weight", "rbr_dense.bn.weight", "rbr_dense.bn.bias",
                                         "rbr_dense.bn.running_mean", "rbr_dense.bn.running_var", "rbr_1x1.weight",
                                         "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"});
}

namespace {
struct TwoChildren : Module {
  explicit TwoChildren(const std::string& second) {
    register_module("a", std::make_shared<ReLU>());
    register_module(second, std::make_shared<ReLU>());
  }
  Tensor forward(const Tensor& x) override { return x; }
};
}  // namespace

TEST_CASE("module: zero_grad drops gradients; a duplicate child name is refused") {
  CHECK(TwoChildren("b").modules().size() == 3);
  CHECK_THROWS_WITH_AS(TwoChildren("a"), doctest::Contains("a child module 'a' exists already"), std::runtime_error);

  Rng rng(2);
  Linear lin(3, 2, rng);
  sum_all(lin.forward(Tensor::full({4, 3}, 1.0f))).backward();
  CHECK(lin.weight.grad().defined());
  lin.zero_grad();
  CHECK(!lin.weight.grad().defined());
  CHECK(!lin.bias.grad().defined());

  Sequential seq;
  seq.push_back(std::make_shared<ReLU>());
  seq.push_back(std::make_shared<ReLU>());
  CHECK(seq.size() == 2);
  std::vector<float> v = seq.forward(Tensor::from_vector({-1, 2}, {2})).to_vector();
  CHECK(v == std::vector<float>{0, 2});
}

// Values drawn from U(-b, b): all inside, some near each end, mean ~0, variance ~b²/3.
static void check_uniform(const Tensor& t, float bound, const std::string& what) {
  std::vector<float> v = t.to_vector();
  double mean = 0, var = 0, lo = 0, hi = 0;
  for (float x : v) {
    mean += x;
    var += (double)x * x;
    lo = std::min(lo, (double)x);
    hi = std::max(hi, (double)x);
  }
  mean /= v.size();
  var /= v.size();
  INFO(what << ": bound " << bound << " min " << lo << " max " << hi << " mean " << mean << " var " << var);
  CHECK(hi <= bound);
  CHECK(lo >= -bound);
  CHECK(hi > 0.95 * bound);
  CHECK(lo < -0.95 * bound);
  CHECK(std::fabs(mean) < 0.05 * bound);
  CHECK(std::fabs(var / (bound * bound / 3) - 1) < 0.1);
}

TEST_CASE("init: PyTorch's defaults: conv and linear U(±1/sqrt(fan_in)), BN 1, 0, 0, 1; seeded") {
  Rng rng(3);
  Conv2d conv(16, 32, 3, 1, 1, 2, true, rng);  // fan_in = 16/2 * 9 = 72
  check_uniform(conv.weight, 1 / std::sqrt(72.0f), "conv weight");
  Linear lin(300, 200, rng);
  check_uniform(lin.weight, 1 / std::sqrt(300.0f), "linear weight");
  for (auto [bias, bound] : {std::pair{conv.bias, 1 / std::sqrt(72.0f)}, std::pair{lin.bias, 1 / std::sqrt(300.0f)}}) {
    std::vector<float> v = bias.to_vector();  // too few values for the statistics: the range only
    CHECK(*std::max_element(v.begin(), v.end()) <= bound);
    CHECK(*std::min_element(v.begin(), v.end()) >= -bound);
    CHECK(*std::max_element(v.begin(), v.end()) - *std::min_element(v.begin(), v.end()) > bound);
  }
  CHECK(lin.parameters()[1].kind == ParamKind::bias);

  BatchNorm2d bn(5);
  CHECK(bn.weight.to_vector() == std::vector<float>(5, 1.0f));
  CHECK(bn.bias.to_vector() == std::vector<float>(5, 0.0f));
  CHECK(bn.running_mean.to_vector() == std::vector<float>(5, 0.0f));
  CHECK(bn.running_var.to_vector() == std::vector<float>(5, 1.0f));
  CHECK(bn.momentum == 0.1f);
  CHECK(bn.eps == 1e-5f);

  Rng a(7), b(7);
  CHECK(Conv2d(4, 4, 3, 1, 1, 1, false, a).weight.to_vector() == Conv2d(4, 4, 3, 1, 1, 1, false, b).weight.to_vector());
  CHECK_THROWS_WITH_AS(Conv2d(6, 4, 3, 1, 1, 4, false, a), doctest::Contains("do not split into 4 groups"),
                       std::runtime_error);
}

// --- the merge ---------------------------------------------------------------------------------------

static BnTensors random_bn(int64_t c, Rng& rng) {
  return {rand_uniform({c}, 0.5f, 1.5f, rng), rand_uniform({c}, -0.3f, 0.3f, rng), rand_uniform({c}, -0.3f, 0.3f, rng),
          rand_uniform({c}, 0.5f, 1.5f, rng), 1e-5f};
}

static double scale_of(const BnTensors& bn, int64_t o) {
  return bn.gamma.f32()[o] / std::sqrt((double)bn.var.f32()[o] + bn.eps);
}
static double shift_of(const BnTensors& bn, int64_t o) { return bn.beta.f32()[o] - bn.mean.f32()[o] * scale_of(bn, o); }

TEST_CASE("identity_kernel: 1 at [i, i % (C/groups), 1, 1] and 0 elsewhere") {
  for (int groups : {1, 2, 4}) {
    Tensor k = identity_kernel(8, groups);
    CHECK(k.shape() == Shape{8, 8 / groups, 3, 3});
    std::vector<float> v = k.to_vector();
    const int per = 8 / groups;
    for (int o = 0; o < 8; o++)
      for (int i = 0; i < per; i++)
        for (int t = 0; t < 9; t++) CHECK(v[(o * per + i) * 9 + t] == (i == o % per && t == 4 ? 1.0f : 0.0f));
  }
}

TEST_CASE("merge_repvgg: the folded, padded and summed kernel and bias, against plain loops") {
  Rng rng(4);
  for (bool with_identity : {true, false}) {
    const int64_t O = 6, groups = 2, I = 3;  // in = out = 6, 3 per group
    Tensor k3 = rand_uniform({O, I, 3, 3}, -1, 1, rng), k1 = rand_uniform({O, I, 1, 1}, -1, 1, rng);
    BnTensors bn3 = random_bn(O, rng), bn1 = random_bn(O, rng), id = random_bn(O, rng);
    KernelBias kb = merge_repvgg(k3, bn3, k1, bn1, with_identity ? &id : nullptr, groups);
    std::vector<double> kernel(O * I * 9), bias(O);
    for (int64_t o = 0; o < O; o++) {
      bias[o] = shift_of(bn3, o) + shift_of(bn1, o) + (with_identity ? shift_of(id, o) : 0);
      for (int64_t i = 0; i < I; i++)
        for (int t = 0; t < 9; t++) {
          double v = k3.f32()[(o * I + i) * 9 + t] * scale_of(bn3, o);
          if (t == 4) v += k1.f32()[o * I + i] * scale_of(bn1, o);
          if (t == 4 && with_identity && i == o % I) v += scale_of(id, o);
          kernel[(o * I + i) * 9 + t] = v;
        }
    }
    check_close(kb.kernel.to_vector(), kernel, 1e-6, 1e-7, "kernel");
    check_close(kb.bias.to_vector(), bias, 1e-6, 1e-7, "bias");
  }
  CHECK_THROWS_WITH_AS(merge_repvgg(Tensor::zeros({4, 4, 3, 3}), random_bn(4, rng), Tensor::zeros({4, 2, 1, 1}),
                                    random_bn(4, rng), nullptr, 1),
                       doctest::Contains("1x1 kernel"), std::runtime_error);
}

TEST_CASE("merge_repvgg is differentiable: gradients reach every branch parameter (gradient check)") {
  Rng rng(5);
  const int64_t O = 4, I = 2;  // groups 2
  BnTensors b3 = random_bn(O, rng), b1 = random_bn(O, rng), bi = random_bn(O, rng);
  std::vector<Tensor> inputs = {rand_uniform({O, I, 3, 3}, -1, 1, rng), b3.gamma, b3.beta, b3.mean, b3.var,
                                rand_uniform({O, I, 1, 1}, -1, 1, rng), b1.gamma, b1.beta, b1.mean, b1.var,
                                bi.gamma, bi.beta, bi.mean, bi.var};
  auto merged = [](const std::vector<Tensor>& in) {
    BnTensors id{in[10], in[11], in[12], in[13], 1e-5f};
    return merge_repvgg(in[0], {in[1], in[2], in[3], in[4], 1e-5f}, in[5], {in[6], in[7], in[8], in[9], 1e-5f}, &id, 2);
  };
  // the deploy conv's output on a fixed input, as a function of the branch parameters
  const Tensor x = rand_uniform({1, O, 5, 5}, -1, 1, rng);
  check_gradients(
      [&](auto& in) {
        KernelBias kb = merged(in);
        return conv2d(x, kb.kernel, kb.bias, 1, 1, 2);
      },
      inputs);
}

TEST_CASE("merge_qarepvgg: against plain loops, and differentiable (gradient check)") {
  Rng rng(6);
  const int64_t O = 4, I = 4;
  Tensor k3 = rand_uniform({O, I, 3, 3}, -1, 1, rng), k1 = rand_uniform({O, I, 1, 1}, -1, 1, rng);
  BnTensors bn3 = random_bn(O, rng), bn = random_bn(O, rng);
  KernelBias kb = merge_qarepvgg(k3, bn3, k1, true, 1, bn);
  std::vector<double> kernel(O * I * 9), bias(O);
  for (int64_t o = 0; o < O; o++) {
    const double t = scale_of(bn, o);
    bias[o] = bn.beta.f32()[o] + (shift_of(bn3, o) - bn.mean.f32()[o]) * t;
    for (int64_t i = 0; i < I; i++)
      for (int tap = 0; tap < 9; tap++) {
        double v = k3.f32()[(o * I + i) * 9 + tap] * scale_of(bn3, o);
        if (tap == 4) v += k1.f32()[o * I + i] + (i == o ? 1 : 0);
        kernel[(o * I + i) * 9 + tap] = v * t;
      }
  }
  check_close(kb.kernel.to_vector(), kernel, 1e-6, 1e-7, "kernel");
  check_close(kb.bias.to_vector(), bias, 1e-6, 1e-7, "bias");

  std::vector<Tensor> inputs = {k3, bn3.gamma, bn3.beta, k1, bn.gamma, bn.beta, bn.var};
  auto merged = [&](const std::vector<Tensor>& in) {
    return merge_qarepvgg(in[0], {in[1], in[2], bn3.mean, bn3.var, 1e-5f}, in[3], true, 1,
                          {in[4], in[5], bn.mean, in[6], 1e-5f});
  };
  const Tensor x = rand_uniform({1, I, 5, 5}, -1, 1, rng);
  check_gradients(
      [&](auto& in) {
        KernelBias kb = merged(in);
        return conv2d(x, kb.kernel, kb.bias, 1, 1, 1);
      },
      inputs);
}

// --- OABN ----------------------------------------------------------------------------------------------

TEST_CASE("oabn_clip_gamma: clips to [-k var, k var] per channel, gradient straight through") {
  Tensor var = Tensor::from_vector({0.5f, 1.0f, 2.0f, 0.25f, 1.0f}, {5});
  Tensor gamma = Tensor::from_vector({2.0f, -4.0f, 3.0f, -0.5f, 0.0f}, {5});
  gamma.requires_grad_(true);
  Tensor used = oabn_clip_gamma(gamma, var, 2.0f);  // bounds 1, 2, 4, 0.5, 2
  CHECK(used.to_vector() == std::vector<float>{1.0f, -2.0f, 3.0f, -0.5f, 0.0f});
  Tensor w = Tensor::from_vector({1, 2, 3, 4, 5}, {5});
  sum_all(mul(used, w)).backward();
  CHECK(gamma.grad().to_vector() == std::vector<float>{1, 2, 3, 4, 5});  // clipped channels too
  CHECK_THROWS_WITH_AS(oabn_clip_gamma(gamma, var, 0.0f), doctest::Contains("must be positive"), std::runtime_error);
}

TEST_CASE("OABN: a BatchNorm2d with oabn_k matches PyTorch (running var before the update, straight through)") {
  const std::string path = testing_util::reference_path("oabn_clip.safetensors");
  st::File f = st::load(path);
  const float k = ref_tensor(f, "k").item();
  BatchNorm2d bn(6);
  bn.oabn_k = k;
  bn.weight.copy_(ref_tensor(f, "gamma"));
  bn.bias.copy_(ref_tensor(f, "beta"));
  bn.running_mean.copy_(ref_tensor(f, "running_mean"));
  bn.running_var.copy_(ref_tensor(f, "running_var"));
  check_ref(bn.gamma_used(), f, "gamma_clipped", 1e-6);
  Tensor x = ref_tensor(f, "input").requires_grad_(true);
  Tensor out = bn.forward(x);
  Tensor loss = sum_all(mul(out, ref_tensor(f, "loss_w")));
  loss.backward();
  check_ref(out, f, "out", 1e-5);
  check_ref(loss, f, "loss", 1e-5);
  check_ref(x.grad(), f, "grad.input", 1e-5);
  check_ref(bn.weight.grad(), f, "grad.gamma", 1e-5);
  check_ref(bn.bias.grad(), f, "grad.beta", 1e-5);
  check_ref(bn.running_mean, f, "after.running_mean", 1e-5);
  check_ref(bn.running_var, f, "after.running_var", 1e-5);
  CHECK(bn.num_batches_tracked == 1);
}

// --- custom L2 -----------------------------------------------------------------------------------------

TEST_CASE("custom L2 of a block: the official formula, against plain loops in double") {
  Rng rng(8);
  RepVGGBlock block(4, 6, 2, 2, rng);  // I/g = 2
  for (auto* bn : {block.rbr_dense->bn.get(), block.rbr_1x1->bn.get()}) {
    bn->weight.copy_(rand_uniform({6}, -1.5f, 1.5f, rng));
    bn->running_var.copy_(rand_uniform({6}, 0.5f, 1.5f, rng));
  }
  const float* k3 = block.rbr_dense->conv->weight.f32();
  const float* k1 = block.rbr_1x1->conv->weight.f32();
  auto t = [](const BatchNorm2d& bn, int o) { return bn.weight.f32()[o] / std::sqrt((double)bn.running_var.f32()[o] + 1e-5); };
  double all = 0, centre = 0, eq = 0;
  for (int o = 0; o < 6; o++)
    for (int i = 0; i < 2; i++) {
      for (int tap = 0; tap < 9; tap++) all += (double)k3[(o * 2 + i) * 9 + tap] * k3[(o * 2 + i) * 9 + tap];
      const double c = k3[(o * 2 + i) * 9 + 4], t3 = t(*block.rbr_dense->bn, o), t1 = t(*block.rbr_1x1->bn, o);
      centre += c * c;
      const double e = c * t3 + k1[o * 2 + i] * t1;
      eq += e * e / (t3 * t3 + t1 * t1);
    }
  Tensor l2 = models::custom_l2(block);
  CHECK(l2.shape() == Shape{});
  check_close({l2.item()}, std::vector<double>{all - centre + eq}, 1e-5, 0, "custom L2");
  l2.backward();
  CHECK(block.rbr_dense->conv->weight.grad().defined());
  CHECK(block.rbr_1x1->conv->weight.grad().defined());
  CHECK(!block.rbr_dense->bn->weight.grad().defined());  // t3, t1 are detached

  CHECK(models::covered_by_custom_l2("stage1.0.rbr_dense.conv.weight"));
  CHECK(models::covered_by_custom_l2("stage0.rbr_1x1.bn.bias"));
  CHECK(!models::covered_by_custom_l2("stage1.0.rbr_identity.weight"));
  CHECK(!models::covered_by_custom_l2("linear.weight"));
}

TEST_CASE("linear: 0 classes (or 0 inputs) is refused when the layer is made, not in oneDNN") {
  Rng rng(9);
  CHECK_THROWS_WITH_AS(Linear(8, 0, rng), doctest::Contains("a linear layer of 8 inputs and 0 outputs (classes): both must be at least 1"),
                       std::runtime_error);
  CHECK_THROWS_WITH_AS(Linear(0, 10, rng), doctest::Contains("0 inputs"), std::runtime_error);
  models::ArchConfig arch = models::cifar_config(models::BlockType::repvgg, 8);
  arch.num_classes = 0;
  CHECK_THROWS_WITH_AS(models::RepVGG(arch, rng), doctest::Contains("0 outputs (classes)"), std::runtime_error);
}
