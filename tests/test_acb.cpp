// ACNet's ACB (layers/acnet_block.h, layers::merge_acb): the merge against plain loops and its gradient
// check; the block's three modes (branches, merged, deploy) against each other in eval and in training,
// stride 1 and 2, groups 1 and 2; against its PyTorch twin (tests/reference/acb_block_*.safetensors); the twin's
// RepQ merged mode against its own branch form (tests/interop/check_repq_twin.py); the acb-cifar model through
// deploy, one QAT step, and the programs downstream of ./train (shared with every block: tests/block_testing.h).
#include <cmath>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/optim.h"
#include "engine/safetensors.h"
#include "layers/acnet_block.h"
#include "layers/checkpoint.h"
#include "layers/quantizer.h"
#include "models/repvgg.h"
#include "tests/block_testing.h"
#include "tests/gradcheck.h"
#include "tests/interop_testing.h"
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

BnTensors random_bn(int64_t c, Rng& rng) {
  return {rand_uniform({c}, 0.5f, 1.5f, rng), rand_uniform({c}, -0.3f, 0.3f, rng), rand_uniform({c}, -0.3f, 0.3f, rng),
          rand_uniform({c}, 0.5f, 1.5f, rng), 1e-5f};
}
double scale_of(const BnTensors& bn, int64_t o) { return bn.gamma.f32()[o] / std::sqrt((double)bn.var.f32()[o] + bn.eps); }
double shift_of(const BnTensors& bn, int64_t o) { return bn.beta.f32()[o] - bn.mean.f32()[o] * scale_of(bn, o); }

std::shared_ptr<ACBlock> make_acb(int in, int out, int stride, int groups, uint64_t seed) {
  Rng rng(seed);
  auto b = std::make_shared<ACBlock>(in, out, stride, groups, rng);
  randomize_bns(*b, seed + 1);
  return b;
}

}  // namespace

// --- the merge ------------------------------------------------------------------------------------------

TEST_CASE("merge_acb: the folded kernels, 1x3 on the middle row and 3x1 on the middle column, against plain loops") {
  Rng rng(4);
  const int64_t O = 6, I = 3;  // e.g. 6 -> 6 in 2 groups
  Tensor sq = rand_uniform({O, I, 3, 3}, -1, 1, rng), hor = rand_uniform({O, I, 1, 3}, -1, 1, rng),
         ver = rand_uniform({O, I, 3, 1}, -1, 1, rng);
  BnTensors bs = random_bn(O, rng), bh = random_bn(O, rng), bv = random_bn(O, rng);
  KernelBias kb = merge_acb(sq, bs, hor, bh, ver, bv);
  REQUIRE(kb.kernel.shape() == Shape{O, I, 3, 3});
  std::vector<double> kernel(O * I * 9), bias(O);
  for (int64_t o = 0; o < O; o++) {
    bias[o] = shift_of(bs, o) + shift_of(bh, o) + shift_of(bv, o);
    for (int64_t i = 0; i < I; i++)
      for (int r = 0; r < 3; r++)
        for (int c = 0; c < 3; c++) {
          double v = sq.f32()[((o * I + i) * 3 + r) * 3 + c] * scale_of(bs, o);
          if (r == 1) v += hor.f32()[(o * I + i) * 3 + c] * scale_of(bh, o);
          if (c == 1) v += ver.f32()[(o * I + i) * 3 + r] * scale_of(bv, o);
          kernel[((o * I + i) * 3 + r) * 3 + c] = v;
        }
  }
  check_close(kb.kernel.to_vector(), kernel, 1e-6, 1e-7, "kernel");
  check_close(kb.bias.to_vector(), bias, 1e-6, 1e-7, "bias");
  // the branches given in the wrong slots are refused, naming the kernel
  CHECK_THROWS_WITH_AS(merge_acb(sq, bs, ver, bh, hor, bv), doctest::Contains("1x3 kernel"), std::runtime_error);
  CHECK_THROWS_WITH_AS(merge_acb(sq, bs, hor, bh, hor, bv), doctest::Contains("3x1 kernel"), std::runtime_error);
  CHECK_THROWS_WITH_AS(pad_to_3x3(Tensor::zeros({2, 2, 2, 3})), doctest::Contains("1 or 3 rows and columns"),
                       std::runtime_error);
  CHECK(pad_to_3x3(Tensor::zeros({2, 2, 1, 1})).shape() == Shape{2, 2, 3, 3});
}

// The deploy conv's output on a fixed input, as a function of the 15 branch tensors (3 kernels, 3 BNs' γ, β, μ, σ²).
static KernelBias merge_of(const std::vector<Tensor>& in, bool wrong_hor_backward) {
  const BnTensors bs{in[1], in[2], in[3], in[4], 1e-5f}, bh{in[6], in[7], in[8], in[9], 1e-5f},
      bv{in[11], in[12], in[13], in[14], 1e-5f};
  if (!wrong_hor_backward) return merge_acb(in[0], bs, in[5], bh, in[10], bv);
  // the same merge, its 1x3 kernel padded by a pad2d whose backward takes the wrong rows
  const KernelBias s = fold_bn(in[0], bs), h = fold_bn(in[5], bh), v = fold_bn(in[10], bv);
  return {add(add(s.kernel, testing_util::pad2d_with_wrong_backward(h.kernel, 1, 0)), pad_to_3x3(v.kernel)),
          add(add(s.bias, h.bias), v.bias)};
}

TEST_CASE("merge_acb is differentiable: a gradient check over every branch parameter, which a wrong pad backward fails") {
  Rng rng(5);
  const int64_t O = 4, I = 2;  // 4 -> 4 in groups of 2
  std::vector<Tensor> inputs;
  for (const Shape& k : {Shape{O, I, 3, 3}, Shape{O, I, 1, 3}, Shape{O, I, 3, 1}}) {
    inputs.push_back(rand_uniform(k, -1, 1, rng));
    const BnTensors bn = random_bn(O, rng);
    for (const Tensor& t : {bn.gamma, bn.beta, bn.mean, bn.var}) inputs.push_back(t);
  }
  const Tensor x = rand_uniform({1, O, 5, 5}, -1, 1, rng);
  auto deploy_conv = [&](bool wrong) {
    return [&x, wrong](const std::vector<Tensor>& in) {
      const KernelBias kb = merge_of(in, wrong);
      return conv2d(x, kb.kernel, kb.bias, 1, 1, 2);
    };
  };
  check_gradients(deploy_conv(false), inputs);
  const std::vector<double> e = testing_util::gradient_errors(deploy_conv(true), inputs);
  INFO("relative gradient error of the 1x3 kernel through the wrong pad backward: " << e[5]);
  CHECK(e[5] > 0.5);
  CHECK(e[0] <= testing_util::GradCheck{}.tolerance);  // the others untouched
  CHECK(e[10] <= testing_util::GradCheck{}.tolerance);
}

// --- the block ------------------------------------------------------------------------------------------

TEST_CASE("ACBlock: the official state-dict names and order, PyTorch's init bounds, deploy leaves rbr_reparam") {
  Rng rng(1);
  ACBlock b(8, 16, 2, 2, rng);
  std::vector<std::string> names;
  for (auto& t : b.state_dict()) names.push_back(t.name);
  CHECK(names == std::vector<std::string>{"square_conv.weight", "square_bn.weight", "square_bn.bias", "square_bn.running_mean",
                                          "square_bn.running_var", "ver_conv.weight", "hor_conv.weight", "ver_bn.weight",
                                          "ver_bn.bias", "ver_bn.running_mean", "ver_bn.running_var", "hor_bn.weight",
                                          "hor_bn.bias", "hor_bn.running_mean", "hor_bn.running_var"});
  CHECK(b.square_conv->weight.shape() == Shape{16, 4, 3, 3});
  CHECK(b.hor_conv->weight.shape() == Shape{16, 4, 1, 3});
  CHECK(b.ver_conv->weight.shape() == Shape{16, 4, 3, 1});
  float most = 0;
  for (float v : b.hor_conv->weight.to_vector()) most = std::max(most, std::fabs(v));
  CHECK(most <= 1.0f / std::sqrt(12.0f));  // U(±1/sqrt(fan_in)), fan_in 4 · 1 · 3
  CHECK(most > 0.8f / std::sqrt(12.0f));
  for (auto& p : b.parameters()) CHECK(p.kind == (p.name.ends_with("conv.weight") ? ParamKind::weight : ParamKind::bn));
  b.switch_to_deploy();
  names.clear();
  for (auto& t : b.state_dict()) names.push_back(t.name);
  CHECK(names == std::vector<std::string>{"rbr_reparam.weight", "rbr_reparam.bias"});
  CHECK(b.square_conv == nullptr);
  CHECK(b.hor_bn == nullptr);
}

TEST_CASE("ACBlock in eval: the branches with running statistics, merged mode and the deploy conv agree") {
  const auto [deploy, merged] = block_testing::check_eval_modes(make_acb);
  MESSAGE("ACB eval, max |y − y_branches| / max |y_branches|: deploy " << deploy << ", merged " << merged);}

TEST_CASE("ACBlock in training: merged mode with batch folding is the branches: output, every gradient, running statistics") {
  // 3 convs, 3 BNs' γ and β; their running statistics
  const auto [y, g] = block_testing::check_merged_training(make_acb, 9, 6);
  MESSAGE("ACB training, merged (RepQ-BN) against the branches, max relative error: output " << y << ", gradients " << g);}

TEST_CASE("ACBlock, RepQ-BNEst: the thin kernels' Eq. 5-6 estimate is the padded kernels' (zero taps add nothing)") {
  auto b = make_acb(8, 8, 1, 2, 7);
  b->switch_to_merged(BnFold::estimated);
  Rng rng(2);
  const Tensor x = rand_uniform({2, 8, 6, 6}, 0, 2, rng);
  const std::vector<float> before = b->hor_bn->running_mean.to_vector();
  const Run r = run_block(*b, x, rand_uniform({2, 8, 6, 6}, -1, 1, rng));
  for (const Tensor& g : r.grads) CHECK(g.defined());
  const Moments thin = estimate_moments(channel_moments(x), b->hor_conv->weight, Tensor(), 2);
  std::vector<double> expected(8);  // running = 0.9 running + 0.1 estimate
  for (int i = 0; i < 8; i++) expected[i] = 0.9 * before[i] + 0.1 * thin.mean.f32()[i];
  check_close(b->hor_bn->running_mean.to_vector(), expected, 1e-5, 1e-6, "hor_bn running mean");
}

// --- against PyTorch ------------------------------------------------------------------------------------

TEST_CASE("ACBlock matches its PyTorch twin (official ACNet names): 8->8 stride 1, and 8->16 stride 2 groups 2") {
  const auto make_block = [](int in, int out, int stride, int groups) {
    Rng rng(0);
    return std::make_unique<ACBlock>(in, out, stride, groups, rng);
  };
  for (const char* file : {"acb_block_s1.safetensors", "acb_block_s2g2.safetensors"})
    for (bool merged : {false, true}) {
      const std::string what = std::string(file) + (merged ? ", merged mode (RepQ-BN fold)" : ", branches");
      INFO(what);
      const double worst = block_testing::check_against_twin(file, merged, make_block);
      MESSAGE(what << ": worst tensor max|ours − PyTorch| / max|PyTorch| " << worst);
    }
}

// The twin's RepQ-BN merged mode (tests/reference/repq_torch.py QACBlock, set_qat on a model of ACBlocks; the
// PyTorch peer of `make bench`'s train-cifar-acb-repq-bn) is its branch form without quantizers, in float64:
// each BN folded with the batch statistics of its own conv's output, as ours (tests/interop/check_repq_twin.py).
TEST_CASE("the PyTorch twin's merged ACB (repq_torch.QACBlock) is its branch form: block and acb-cifar, float64" *
          skip_unless(python_has({"torch"}), "repq twin: " + python_needs({"torch"}, "apt-get install python3-torch"))) {
  const PythonRun r = run_python({"tests/interop/check_repq_twin.py"});
  MESSAGE(r.output);
  CHECK(r.rc == 0);
}

// --- the model ------------------------------------------------------------------------------------------

TEST_CASE("acb-cifar at width 8: parameter counts, and its deploy form gives the train form's eval output") {
  CHECK(models::cifar_config(models::BlockType::acb, 8).name == "acb-cifar");
  CHECK(models::arch_config("acb-a0").block == models::BlockType::acb);
  const double e = block_testing::check_cifar_deploy(models::BlockType::acb);
  MESSAGE("acb-cifar width 8, deploy against train-form eval logits: " << e);
}

TEST_CASE("acb-cifar at width 8: a RepQ-BN step reaches every branch and step; eval logits equal the deploy form's") {
  const models::ArchConfig arch = models::cifar_config(models::BlockType::acb, 8);
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
  for (auto& p : m.parameters()) {
    INFO(p.name);
    REQUIRE(p.tensor.grad().defined());
    double norm = 0;
    for (float g : p.tensor.grad().to_vector()) norm += (double)g * g;
    // stage0 and the FC have no quantizers; every block has its branches; stage1.1's hor kernel is one of them
    if (p.name.find("conv.weight") != std::string::npos || p.name.ends_with("weight_quant.step")) CHECK(norm > 0);
  }
  sgd.step();
  m.eval();
  NoGradGuard no_grad;
  const Tensor eval_logits = m.forward(x);
  m.switch_to_deploy();
  check_close(m.forward(x).to_vector(), eval_logits.to_vector(), 1e-4, 1e-5, "deploy");
}

// The programs take the arch unchanged (tests/block_testing.h).
TEST_CASE("acb-cifar through ./train, every --qat method, ./ptq --export, ./infer, ./inspect, ./export --onnx and --qdq") {
  block_testing::check_programs("acb-cifar", "stage1.0.hor_conv.weight");
}
