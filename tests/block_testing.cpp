#include "tests/block_testing.h"

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "deploy/int8_model.h"
#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/random.h"
#include "engine/safetensors.h"
#include "layers/checkpoint.h"
#include "layers/layers.h"
#include "models/repvgg.h"
#include "quant/export.h"
#include "quant/infer.h"
#include "quant/inspect.h"
#include "quant/ptq.h"
#include "tests/gradcheck.h"
#include "tests/model_refs.h"
#include "tests/testing.h"
#include "trainer/options.h"
#include "trainer/trainer.h"

namespace block_testing {

namespace fs = std::filesystem;
using engine::Tensor;

double rel_err(const std::vector<float>& a, const std::vector<float>& b) {
  REQUIRE(a.size() == b.size());
  double d = 0, m = 0;
  for (size_t i = 0; i < a.size(); i++) {
    const double e = std::fabs((double)a[i] - b[i]);
    if (!(e <= d)) d = e;
    m = std::max(m, (double)std::fabs(b[i]));
  }
  return d / m;
}

Run run_block(layers::RepBlock& b, const Tensor& x0, const Tensor& w) {
  Tensor x = x0.clone();
  x.requires_grad_(true);
  Run r;
  r.y = b.forward(x);
  engine::sum_all(engine::mul(r.y, w)).backward();
  r.gx = x.grad();
  for (auto& p : b.parameters()) r.grads.push_back(p.tensor.grad());
  return r;
}

std::pair<double, double> check_eval_modes(const MakeSeeded& make) {
  double worst_deploy = 0, worst_merged = 0;
  for (const Case& c : kCases) {
    INFO(c.name);
    auto branches = make(c.in, c.out, c.stride, c.groups, 11);
    auto merged = make(c.in, c.out, c.stride, c.groups, 11);
    merged->switch_to_merged(layers::BnFold::batch);  // eval folds the running statistics whatever the training fold
    branches->eval();
    merged->eval();
    engine::Rng rng(3);
    const Tensor x = engine::rand_uniform({2, c.in, 7, 7}, -1, 2, rng);
    engine::NoGradGuard no_grad;
    const std::vector<float> y = branches->forward(x).to_vector();
    const double e_merged = rel_err(merged->forward(x).to_vector(), y);
    branches->switch_to_deploy();
    REQUIRE(branches->deployed());
    const Tensor yd = branches->forward(x);
    CHECK(yd.shape() == (engine::Shape{2, c.out, (7 - 1) / c.stride + 1, (7 - 1) / c.stride + 1}));
    const double e_deploy = rel_err(yd.to_vector(), y);
    CHECK(e_merged <= 1e-5);
    CHECK(e_deploy <= 1e-5);
    worst_merged = std::max(worst_merged, e_merged);
    worst_deploy = std::max(worst_deploy, e_deploy);
  }
  return {worst_deploy, worst_merged};
}

std::pair<double, double> check_merged_training(const MakeSeeded& make, size_t params, size_t buffers) {
  double worst_y = 0, worst_g = 0;
  for (const Case& c : kCases) {
    INFO(c.name);
    auto branches = make(c.in, c.out, c.stride, c.groups, 11);
    auto merged = make(c.in, c.out, c.stride, c.groups, 11);
    merged->switch_to_merged(layers::BnFold::batch);
    engine::Rng rng(3);
    const int64_t side = (7 - 1) / c.stride + 1;
    const Tensor x = engine::rand_uniform({4, c.in, 7, 7}, -1, 2, rng),
                 w = engine::rand_uniform({4, c.out, side, side}, -1, 1, rng);
    const Run a = run_block(*branches, x, w), b = run_block(*merged, x, w);
    testing_util::check_close(b.y.to_vector(), a.y.to_vector(), 1e-4, 1e-5, "output");
    testing_util::check_close(b.gx.to_vector(), a.gx.to_vector(), 1e-3, 1e-5, "input gradient");
    worst_y = std::max(worst_y, rel_err(b.y.to_vector(), a.y.to_vector()));
    worst_g = std::max(worst_g, rel_err(b.gx.to_vector(), a.gx.to_vector()));
    const auto ps = branches->parameters();
    REQUIRE(a.grads.size() == params);
    REQUIRE(b.grads.size() == params);
    for (size_t i = 0; i < a.grads.size(); i++) {
      REQUIRE_MESSAGE(a.grads[i].defined(), ps[i].name);
      REQUIRE_MESSAGE(b.grads[i].defined(), ps[i].name);
      testing_util::check_close(b.grads[i].to_vector(), a.grads[i].to_vector(), 1e-3, 1e-5, ps[i].name);
      worst_g = std::max(worst_g, rel_err(b.grads[i].to_vector(), a.grads[i].to_vector()));
    }
    const auto bufs_a = branches->buffers(), bufs_b = merged->buffers();
    REQUIRE(bufs_a.size() == buffers);
    for (size_t i = 0; i < bufs_a.size(); i++)
      testing_util::check_close(bufs_b[i].tensor.to_vector(), bufs_a[i].tensor.to_vector(), 1e-5, 1e-6, bufs_a[i].name);
    for (auto& [name, m] : merged->modules())
      if (auto* bn = dynamic_cast<layers::BatchNorm2d*>(m)) CHECK_MESSAGE(bn->num_batches_tracked == 1, name);
  }
  return {worst_y, worst_g};
}

double check_against_twin(const std::string& file, bool merged_mode, const MakeBlock& make) {
  const std::string path = testing_util::reference_path(file);
  const st::File f = st::load(path);
  auto md = [&](const char* k) { return std::stoi(f.metadata.at(k)); };
  double worst = 0;  // over the tensors whose reference is not zero
  auto compare = [&](const Tensor& got, const std::string& key) {
    testing_util::check_ref(got, f, key, 1e-5);
    const std::vector<float> r = testing_util::ref_tensor(f, key).to_vector();
    double most = 0;
    for (float v : r) most = std::max(most, (double)std::fabs(v));
    if (got.defined() && most >= 1e-6) worst = std::max(worst, rel_err(got.to_vector(), r));
  };
  std::unique_ptr<layers::RepBlock> b = make(md("in_channels"), md("out_channels"), md("stride"), md("groups"));
  CHECK(f.metadata.at("has_identity") == (b->has_identity() ? "true" : "false"));
  layers::load_state_dict(*b, f, "param.", path);
  if (merged_mode) b->switch_to_merged(layers::BnFold::batch);
  const Tensor x = testing_util::ref_tensor(f, "input");
  Tensor out = b->forward(x);
  Tensor loss = engine::sum_all(engine::mul(out, testing_util::ref_tensor(f, "loss_w")));
  loss.backward();
  compare(out, "out_train");
  compare(loss, "loss");
  for (auto& p : b->parameters()) compare(p.tensor.grad(), "grad." + p.name);
  for (auto& t : b->buffers()) compare(t.tensor, "after." + t.name);
  b->eval();
  engine::NoGradGuard no_grad;
  compare(b->forward(x), "out_eval");
  b->switch_to_deploy();
  for (auto& t : b->state_dict()) compare(t.tensor, "deploy." + t.name);
  compare(b->forward(x), "out_deploy");
  return worst;
}

double check_cifar_deploy(models::BlockType block) {
  const models::ArchConfig arch = models::cifar_config(block, 8);
  engine::Rng rng(6);
  models::RepVGG model(arch, rng);
  testing_util::randomize_bns(model, 7);
  auto count = [](const layers::Module& m) {
    int64_t n = 0;
    for (auto& p : m.parameters()) n += p.tensor.numel();
    return n;
  };
  CHECK(count(model) == models::model_size(arch, false, 32).params);
  for (const models::QuantLayer& l : model.quant_layers()) CHECK_FALSE(l.identity);
  model.eval();
  engine::NoGradGuard no_grad;
  const Tensor x = engine::rand_normal({2, 3, 32, 32}, 0.0f, 1.0f, rng);
  const std::vector<float> eval = model.forward(x).to_vector();
  model.switch_to_deploy();
  CHECK(count(model) == models::model_size(arch, true, 32).params);
  const double e = rel_err(model.forward(x).to_vector(), eval);
  CHECK(e <= conv_tolerance(1e-5, 1e-4));  // our Winograd: orepa-cifar width 8 measured 1.3e-5
  CHECK_THROWS_WITH_AS(models::RepVGG(arch, rng, 3.0f), doctest::Contains("blocks do not have"), std::runtime_error);
  return e;
}

void check_programs(const std::string& arch, const std::string& tensor) {
  const fs::path root = fresh_temp_dir(arch + "_programs");
  const fs::path data = make_cifar(root / "cifar", 2, 8);
  const std::string d = data.string();
  auto train = [&](const fs::path& out, std::vector<std::string> more) {
    std::vector<std::string> a = {"cifar10", "--data", d, "--out", out.string(), "--arch", arch,
                                  "--epochs", "1", "--limit-train", "8", "--batch-size", "4", "--threads", "2", "--seed", "3"};
    a.insert(a.end(), more.begin(), more.end());
    return train::run_training(train::parse_options(a), a);
  };
  CHECK_THROWS_WITH_AS(train(root / "oabn", {"--oabn-k", "3"}), doctest::Contains((arch + " has no identity-branch BN").c_str()),
                       std::runtime_error);
  CHECK_THROWS_WITH_AS(train(root / "l2", {"--custom-l2"}), doctest::Contains("--custom-l2 is RepVGG's"), std::runtime_error);
  REQUIRE(train(root / "fp", {}) == 0);
  const std::string fp = (root / "fp" / "last.safetensors").string();
  CHECK(st::load(fp).tensors.count(tensor));
  REQUIRE(train(root / "qat", {"--qat", "repq-bn", "--bits", "8", "--granularity", "channel", "--init", fp, "--lr", "0.001"}) == 0);
  const std::string qat = (root / "qat" / "last.safetensors").string();
  CHECK(st::load(qat).metadata.at("arch") == arch);
  const std::string int8 = (root / "m.int8.safetensors").string();
  REQUIRE(quant::run_ptq({"--ckpt", qat, "--data", d, "--limit-val", "8", "--threads", "2", "--export", int8}) == 0);
  CHECK(quant::run_infer({"--model", int8, "--data", d, "--limit-val", "8", "--threads", "2"}) == 0);
  CHECK(quant::run_inspect({"--ckpt", qat, "--data", d, "--batch-size", "4", "--threads", "2"}) == 0);
  REQUIRE(quant::run_export({"--ckpt", fp, "--onnx", (root / "fp.onnx").string()}) == 0);
  CHECK(fs::file_size(root / "fp.onnx") > 1000);
  REQUIRE(quant::run_export({"--ckpt", qat, "--onnx", (root / "qat.onnx").string(), "--qdq"}) == 0);
  CHECK(quant::run_ptq({"--ckpt", fp, "--data", d, "--limit-val", "8", "--threads", "2", "--bits", "8"}) == 0);

  // issue 26's pieces: the sensitivity table (no layer has an identity branch), two integer widths in one file
  const fs::path sens = root / "sens.json";
  REQUIRE(quant::run_ptq({"--ckpt", fp, "--data", d, "--limit-val", "8", "--threads", "2", "--bits", "4", "--sensitivity",
                          "--sensitivity-images", "8", "--json", sens.string()}) == 0);
  const std::string table = nlohmann::json::parse(std::ifstream(sens)).dump();
  CHECK(table.find("\"identity\":true") == std::string::npos);
  CHECK(table.find("\"identity\":false") != std::string::npos);
  const std::string mixed = (root / "mixed.int8.safetensors").string();
  const bool resnet = models::arch_config(arch).family == models::Family::resnet;
  const std::string first_stage = resnet ? "layer1." : "stage1.", fp32_layer = resnet ? "layer2.0.conv2" : "stage2.0";
  REQUIRE(quant::run_ptq({"--ckpt", fp, "--data", d, "--limit-val", "8", "--threads", "2", "--bits", "4", "--act-bits", "8",
                          "--layer-bits", first_stage + "*=8," + fp32_layer + "=fp32", "--export", mixed}) == 0);
  const deploy::Int8Model m = deploy::load_int8(mixed);
  for (const deploy::Int8Layer& l : m.layers) {
    CAPTURE(l.name);
    // the first layer and the FC: FP32 by default
    const bool fp32 = &l == &m.layers.front() || l.fc || l.name == fp32_layer;
    CHECK(l.widths.weight == (fp32 ? 0 : l.name.starts_with(first_stage) ? 8 : 4));
  }
  CHECK(quant::run_infer({"--model", mixed, "--data", d, "--limit-val", "8", "--threads", "2"}) == 0);

  // the other QAT methods, one epoch each; the compressed ClusterQAT file into ./infer
  for (const char* method : {"repq-bnest", "merged", "bnest", "cluster"}) {
    INFO(method);
    const fs::path out = root / method;
    REQUIRE(train(out, {"--qat", method, "--bits", "4", "--init", fp, "--lr", "0.001"}) == 0);
    CHECK(st::load((out / "last.safetensors").string()).metadata.at("qat") == method);
  }
  const std::string packed = (root / "c.safetensors").string();
  REQUIRE(quant::run_ptq({"--ckpt", (root / "cluster" / "last.safetensors").string(), "--data", d, "--limit-val", "8",
                          "--threads", "2", "--export", packed}) == 0);
  CHECK(quant::run_infer({"--model", packed, "--data", d, "--limit-val", "8", "--threads", "2"}) == 0);
  fs::remove_all(root);
}

}  // namespace block_testing
