// RepVGG, QARepVGG, ACB and OREPA blocks and models: sizes against the paper and tests/reference/model_stats.txt,
// training forward, loss, gradients, running statistics, eval, deploy weights and deploy output against
// PyTorch (tests/reference/*.safetensors), and deploy == eval for every arch.
#include <cmath>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "models/repvgg.h"
#include "tests/model_refs.h"

using namespace engine;
using namespace layers;
using namespace models;
using testing_util::check_ref;
using testing_util::ref_tensor;
using testing_util::reference_path;

TEST_CASE("archs: the official list plus the CIFAR model, with each of the four blocks, then ResNet-18 with three; an unknown name lists the known") {
  CHECK(arch_names().size() == 56 + 6);
  CHECK(arch_names()[28] == "acb-a0");
  CHECK(arch_names()[41] == "acb-cifar");
  CHECK(arch_names()[42] == "orepa-a0");
  CHECK(arch_names()[55] == "orepa-cifar");
  CHECK(arch_names()[56] == "resnet18");
  CHECK(arch_names().back() == "orepa-resnet18-cifar");
  CHECK(arch_config("acb-resnet18-cifar-w16").width_multiplier[0] == 0.25);
  CHECK(arch_config("acb-resnet18-cifar-w16").block == BlockType::acb);
  CHECK(arch_config("resnet18").block == BlockType::plain);
  CHECK(arch_config("resnet18").family == Family::resnet);
  for (const char* bad : {"resnet18-w", "resnet18-w0", "resnet18-cifarx", "plain-resnet18", "acb-resnet18-w16-cifar"})
    CHECK_THROWS_WITH_AS(arch_config(bad), doctest::Contains("unknown arch"), std::runtime_error);
  CHECK(arch_config("orepa-b2g4").block == BlockType::orepa);
  CHECK(arch_config("acb-b1g2").block == BlockType::acb);
  CHECK(arch_config("acb-b1g2").groups == 2);
  CHECK(arch_names().front() == "repvgg-a0");
  ArchConfig b1g4 = arch_config("repvgg-b1g4");
  CHECK(b1g4.groups == 4);
  CHECK(b1g4.num_classes == 1000);
  auto specs = layer_specs(b1g4);
  REQUIRE(specs.size() == 1 + 4 + 6 + 16 + 1 + 1);
  CHECK(specs[0].out == 64);
  CHECK(specs[0].source == -1);
  CHECK(specs[1].name == "stage1.0");
  CHECK(specs[1].source == 0);
  CHECK(specs[1].groups == 1);  // layer 1
  CHECK(specs[2].groups == 4);  // layer 2
  CHECK(specs[2].stride == 1);
  CHECK(specs[5].name == "stage2.0");
  CHECK(specs[5].stride == 2);
  CHECK(specs[27].name == "stage4.0");
  CHECK(specs[27].groups == 1);  // layer 27
  CHECK(specs[27].out == 2048);
  CHECK(specs[28].fc);
  CHECK(specs[28].name == "linear");
  CHECK(specs[28].source == 27);
  for (const LayerSpec& l : specs) CHECK((l.residual == -1 && l.kernel == (l.fc ? 1 : 3) && l.relu != l.fc));
  ArchConfig cifar = arch_config("qarepvgg-cifar");
  CHECK(cifar.block == BlockType::qarepvgg);
  CHECK(cifar.stage0_stride == 1);
  CHECK(cifar.num_classes == 10);
  for (auto& b : layer_specs(cifar))
    if (!b.fc) CHECK(b.out == 64);
  CHECK_THROWS_WITH_AS(arch_config("repvgg-b9"), doctest::Contains("known: repvgg-a0, repvgg-a1"), std::runtime_error);
}

TEST_CASE("sizes: deploy params and MACs of the RepVGG paper's table; A0 8.309 M; repvgg-cifar 1.036 M") {
  struct Row { const char* name; double mparams, gmacs; };
  const Row paper[] = {{"repvgg-a0", 8.30, 1.4},    {"repvgg-a1", 12.78, 2.4},  {"repvgg-a2", 25.49, 5.1},
                       {"repvgg-b0", 14.33, 3.1},   {"repvgg-b1", 51.82, 11.8}, {"repvgg-b1g2", 41.36, 8.8},
                       {"repvgg-b1g4", 36.12, 7.3}, {"repvgg-b2", 80.31, 18.4}, {"repvgg-b2g4", 55.77, 11.3},
                       {"repvgg-b3", 110.96, 26.2}};
  for (const Row& r : paper) {
    ModelSize d = model_size(arch_config(r.name), true, 224);
    INFO(r.name << ": " << d.params << " params, " << d.macs << " MACs");
    CHECK(std::floor(d.params / 1e4) / 100 == doctest::Approx(r.mparams));  // the paper truncates
    CHECK(std::fabs(d.macs / 1e9 - r.gmacs) <= 0.05);
  }
  CHECK(model_size(arch_config("repvgg-a0"), true, 224).params == 8309384);
  CHECK(model_size(arch_config("repvgg-cifar"), false, 32).params == 1035914);
}

// torchvision's resnet18: 11,689,512 parameters, 1.814 G MACs (its documentation's "GFLOPS 1.81"); the layer
// list in torchvision's order: conv1, then per BasicBlock conv1, [downsample], conv2, each conv2 adding the
// downsample's output or the block's input.
TEST_CASE("sizes and layers: resnet18 has torchvision's counts; its layer list wires torchvision's BasicBlocks") {
  const ModelSize t = model_size(arch_config("resnet18"), false, 224);
  CHECK(t.params == 11689512);
  CHECK(std::fabs(t.macs / 1e9 - 1.814) < 0.0005);
  const std::vector<LayerSpec> s = layer_specs(arch_config("resnet18"));
  REQUIRE(s.size() == 1 + 16 + 3 + 1);
  CHECK((s[0].name == "conv1" && s[0].kernel == 7 && s[0].stride == 2 && s[0].max_pool && s[0].block == BlockType::plain));
  CHECK((s[1].name == "layer1.0.conv1" && s[1].source == 0 && s[1].residual == -1 && s[1].relu));
  CHECK((s[2].name == "layer1.0.conv2" && s[2].source == 1 && s[2].residual == 0 && s[2].relu));
  CHECK((s[5].name == "layer2.0.conv1" && s[5].stride == 2 && s[5].source == 4 && s[5].in == 64 && s[5].out == 128));
  CHECK((s[6].name == "layer2.0.downsample" && s[6].kernel == 1 && s[6].stride == 2 && s[6].source == 4 && !s[6].relu));
  CHECK((s[7].name == "layer2.0.conv2" && s[7].source == 5 && s[7].residual == 6));
  CHECK((s[8].name == "layer2.1.conv1" && s[8].source == 7));
  CHECK((s[9].residual == 7 && s[19].name == "layer4.1.conv2" && s[19].out == 512));
  CHECK((s[20].name == "fc" && s[20].fc && s[20].source == 19 && s[20].in == 512 && s[20].out == 1000));
  CHECK(input_owner(s, 6) == 5);  // the downsample reads layer2.0.conv1's input
  CHECK(input_owner(s, 5) == 5);
  const std::vector<LayerSpec> c = layer_specs(arch_config("orepa-resnet18-cifar-w16"));
  CHECK((c[0].kernel == 3 && c[0].stride == 1 && !c[0].max_pool && c[0].block == BlockType::orepa && c[0].out == 16));
  CHECK((c[6].block == BlockType::plain && c[7].block == BlockType::orepa && c[20].out == 10));
}

TEST_CASE("sizes: every arch, both forms, equal PyTorch's counts (tests/reference/model_stats.txt)") {
  std::ifstream in(reference_path("model_stats.txt"));
  REQUIRE(in.good());
  std::set<std::string> seen;
  for (std::string line; std::getline(in, line);) {
    if (line.empty() || line[0] == '#' || line.starts_with("arch")) continue;
    std::istringstream row(line);
    std::string name;
    int res;
    int64_t tp, tm, dp, dm;
    REQUIRE_MESSAGE(bool(row >> name >> res >> tp >> tm >> dp >> dm), line);
    ArchConfig a = arch_config(name);
    CHECK(res == a.resolution);
    ModelSize t = model_size(a, false, res), d = model_size(a, true, res);
    INFO(name);
    CHECK(t.params == tp);
    CHECK(t.macs == tm);
    CHECK(d.params == dp);
    CHECK(d.macs == dm);
    seen.insert(name);
  }
  CHECK(seen == std::set<std::string>(arch_names().begin(), arch_names().end()));
}

// --- against PyTorch -----------------------------------------------------------------------------------

namespace {
struct Tolerances {
  double out_train, grad, other;
};
const Tolerances kModelTol{1e-4, 1e-3, 2e-5};  // tests/reference/README.md
// The blocks' 1e-5, or 1e-4 where our Winograd runs their 3x3 convolutions (the 8->8 block's loss measured 2.6e-5).
Tolerances block_tol() {
  const double t = conv_tolerance(1e-5, 1e-4);
  return {t, t, t};
}
}  // namespace

// Runs the reference case of `file` on `m` (built with the file's structure): training forward, loss,
// backward, running statistics, [custom L2], eval, deploy. `loss_of` maps the training output to the loss.
static void check_against_reference(const std::string& file, Module& m, const Tolerances& tol,
                                    const std::function<Tensor(const Tensor&, const st::File&)>& loss_of,
                                    const RepVGGBlock* custom_l2_block = nullptr) {
  const std::string path = reference_path(file);
  st::File f = st::load(path);
  load_state_dict(m, f, "param.", path);
  const Tensor x = ref_tensor(f, "input");

  m.train();
  Tensor out = m.forward(x);
  Tensor loss = loss_of(out, f);
  loss.backward();
  check_ref(out, f, "out_train", tol.out_train);
  check_ref(loss, f, "loss", tol.other);
  std::set<std::string> keys;
  for (auto& p : m.parameters()) {
    check_ref(p.tensor.grad(), f, "grad." + p.name, tol.grad);
    keys.insert("grad." + p.name);
  }
  for (auto& b : m.buffers()) {
    check_ref(b.tensor, f, "after." + b.name, tol.other);
    keys.insert("after." + b.name);
  }
  if (custom_l2_block) {
    m.zero_grad();
    Tensor l2 = custom_l2(*custom_l2_block);
    l2.backward();
    check_ref(l2, f, "custom_l2", tol.other);
    for (auto& p : m.parameters()) check_ref(p.tensor.grad(), f, "l2grad." + p.name, tol.grad);
  }
  m.zero_grad();

  m.eval();
  NoGradGuard no_grad;
  check_ref(m.forward(x), f, "out_eval", tol.other);
  m.switch_to_deploy();
  for (auto& t : m.state_dict()) {
    check_ref(t.tensor, f, "deploy." + t.name, tol.other);
    keys.insert("deploy." + t.name);
  }
  check_ref(m.forward(x), f, "out_deploy", tol.other);
  // every reference tensor of these kinds was compared
  for (auto& [key, e] : f.tensors)
    if (key.starts_with("grad.") || key.starts_with("after.") || key.starts_with("deploy."))
      CHECK_MESSAGE(keys.count(key), file << ": reference " << key << " has no counterpart");
}

static Tensor weighted_sum_loss(const Tensor& out, const st::File& f) {
  return sum_all(mul(out, ref_tensor(f, "loss_w")));
}

static Tensor cross_entropy_loss(const Tensor& out, const st::File& f) {
  std::vector<int64_t> labels = f.tensors.at("labels").to_vector<int64_t>();
  Tensor l = Tensor::empty({(int64_t)labels.size()}, DType::i32);
  for (size_t i = 0; i < labels.size(); i++) l.data<int32_t>()[i] = (int32_t)labels[i];
  return cross_entropy(out, l);
}

TEST_CASE("RepVGG block 8->8 stride 1 (identity branch) matches PyTorch, custom L2 included") {
  Rng rng(1);
  RepVGGBlock block(8, 8, 1, 1, rng);
  check_against_reference("repvgg_block_s1.safetensors", block, block_tol(), weighted_sum_loss, &block);
}

TEST_CASE("RepVGG block 8->16 stride 2 groups 2 (no identity) matches PyTorch") {
  Rng rng(2);
  RepVGGBlock block(8, 16, 2, 2, rng);
  check_against_reference("repvgg_block_s2g2.safetensors", block, block_tol(), weighted_sum_loss);
}

TEST_CASE("QARepVGG block 8->8 stride 1 matches PyTorch") {
  Rng rng(3);
  QARepVGGBlock block(8, 8, 1, 1, rng);
  check_against_reference("qarepvgg_block_s1.safetensors", block, block_tol(), weighted_sum_loss);
}

TEST_CASE("repvgg-cifar (width 16) matches PyTorch: forward, cross-entropy, gradients, statistics, deploy") {
  Rng rng(4);
  RepVGG model(cifar_config(BlockType::repvgg, 16), rng);
  check_against_reference("repvgg_cifar_w16.safetensors", model, kModelTol, cross_entropy_loss);
}

TEST_CASE("qarepvgg-cifar (width 16) matches PyTorch: forward, cross-entropy, gradients, statistics, deploy") {
  Rng rng(5);
  RepVGG model(cifar_config(BlockType::qarepvgg, 16), rng);
  check_against_reference("qarepvgg_cifar_w16.safetensors", model, kModelTol, cross_entropy_loss);
}

// --- deploy == eval ----------------------------------------------------------------------------------

// As tests/reference/make_model_refs.py: gamma 1 + 0.3 N, beta 0.2 N, mean 0.2 N, var U(0.5, 1.5).
static void randomize_bn(Module& model, Rng& rng) {
  for (auto& [name, m] : model.modules())
    if (auto* bn = dynamic_cast<BatchNorm2d*>(m)) {
      const int64_t c = bn->weight.numel();
      bn->weight.copy_(rand_normal({c}, 1.0f, 0.3f, rng));
      bn->bias.copy_(rand_normal({c}, 0.0f, 0.2f, rng));
      bn->running_mean.copy_(rand_normal({c}, 0.0f, 0.2f, rng));
      bn->running_var.copy_(rand_uniform({c}, 0.5f, 1.5f, rng));
    }
}

static int64_t count_params(const Module& m) {
  int64_t n = 0;
  for (auto& p : m.parameters()) n += p.tensor.numel();
  return n;
}

static double max_abs(const std::vector<float>& v) {
  double m = 0;
  for (float x : v) m = std::max(m, (double)std::fabs(x));
  return m;
}

// max |a - b| / max |b|
static double rel_err(const std::vector<float>& a, const std::vector<float>& b) {
  double d = 0;
  for (size_t i = 0; i < a.size(); i++) {
    const double e = std::fabs((double)a[i] - b[i]);
    if (!(e <= d)) d = e;
  }
  return d / max_abs(b);
}

// The deploy form's output against the eval output, and the parameter counts of both forms against
// model_size, on a model built from `arch` with random BN state.
static void check_deploy_equals_eval(const ArchConfig& arch, int resolution) {
  Rng rng(6);
  auto m = make_model(arch, rng);
  Model& model = *m;
  randomize_bn(model, rng);
  CHECK(count_params(model) == model_size(arch, false, resolution).params);
  model.eval();
  NoGradGuard no_grad;
  const Tensor x = rand_normal({2, 3, resolution, resolution}, 0.0f, 1.0f, rng);
  const std::vector<float> eval = model.forward(x).to_vector();
  model.switch_to_deploy();
  CHECK(count_params(model) == model_size(arch, true, resolution).params);
  for (auto& b : model.blocks()) CHECK(b->deployed());
  CHECK(model.buffers().empty());
  CHECK(rel_err(model.forward(x).to_vector(), eval) <= 1e-5);
}

TEST_CASE("deploy output equals the eval output (1e-5): repvgg-a0, qarepvgg-a0, acb-a0, orepa-a0 and the CIFAR models, full size") {
  for (const char* name :
       {"repvgg-a0", "qarepvgg-a0", "acb-a0", "orepa-a0", "repvgg-cifar", "qarepvgg-cifar", "acb-cifar", "orepa-cifar"}) {
    INFO(name);
    check_deploy_equals_eval(arch_config(name), 32);
  }
}

// Building and merging every full-size arch (1.4 G parameters in all) would take minutes: the same
// structures (depths, strides, groups, identity branches) at 1/8 of the width.
TEST_CASE("deploy output equals the eval output (1e-5): every arch at 1/8 width") {
  for (const std::string& name : arch_names()) {
    INFO(name);
    ArchConfig arch = arch_config(name);
    if (arch.family == Family::resnet) arch = resnet18_config(arch.block, name.ends_with("cifar"), 8);
    else if (name.ends_with("cifar")) arch = cifar_config(arch.block, 8);
    else
      for (double& m : arch.width_multiplier) m /= 8;
    check_deploy_equals_eval(arch, 32);
  }
}

TEST_CASE("OABN on a model: clipped identity gammas change the output, and deploy still equals eval") {
  const ArchConfig arch = cifar_config(BlockType::repvgg, 16);
  Rng rng(7);
  RepVGG plain(arch, rng);
  randomize_bn(plain, rng);
  Rng rng2(7);
  RepVGG clipped(arch, rng2, 0.8f);  // bounds 0.8 var in [0.4, 1.2] against gammas ~ 1 ± 0.3: some clip
  randomize_bn(clipped, rng2);
  CHECK_THROWS_WITH_AS(RepVGG(cifar_config(BlockType::qarepvgg, 16), rng, 1.0f), doctest::Contains("OABN"),
                       std::runtime_error);
  int with_identity = 0;
  for (auto& b : clipped.blocks()) {
    auto& block = static_cast<RepVGGBlock&>(*b);
    CHECK(block.rbr_dense->bn->oabn_k == 0);
    if (block.rbr_identity) {
      CHECK(block.rbr_identity->oabn_k == 0.8f);
      with_identity++;
    }
  }
  CHECK(with_identity == 21);  // 26 blocks less stage0 and the first block of each stage

  plain.eval();
  clipped.eval();
  NoGradGuard no_grad;
  const Tensor x = rand_normal({2, 3, 32, 32}, 0.0f, 1.0f, rng);
  const std::vector<float> eval = clipped.forward(x).to_vector();
  CHECK(rel_err(plain.forward(x).to_vector(), eval) > 1e-3);
  clipped.switch_to_deploy();
  CHECK(rel_err(clipped.forward(x).to_vector(), eval) <= 1e-5);
}

TEST_CASE("custom L2 of a model sums its blocks; QARepVGG has none") {
  Rng rng(8);
  RepVGG model(cifar_config(BlockType::repvgg, 8), rng);
  double sum = 0;
  for (auto& b : model.blocks()) sum += custom_l2(static_cast<RepVGGBlock&>(*b)).item();
  CHECK(custom_l2(model).item() == doctest::Approx(sum).epsilon(1e-5));
  RepVGG qa(cifar_config(BlockType::qarepvgg, 8), rng);
  CHECK_THROWS_WITH_AS(custom_l2(qa), doctest::Contains("custom L2"), std::runtime_error);
}
