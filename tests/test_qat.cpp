// ./train --qat and ./ptq on a QAT run: resume bit-exactly mid-epoch, clear errors that write nothing.
// On a small made-up CIFAR-10 folder, as test_train.cpp.
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "deploy/cluster_file.h"
#include "deploy/int8_model.h"
#include "engine/safetensors.h"
#include "layers/checkpoint.h"
#include "models/repvgg.h"
#include "quant/infer.h"
#include "quant/ptq.h"
#include "tests/testing.h"
#include "trainer/options.h"
#include "trainer/trainer.h"

namespace fs = std::filesystem;
using train::parse_options;

static int run(const std::vector<std::string>& args) { return train::run_training(parse_options(args), args); }

static std::vector<std::string> args_for(const fs::path& data, const fs::path& out, std::vector<std::string> more) {
  std::vector<std::string> a = {"cifar10", "--data", data.string(), "--out", out.string(), "--batch-size", "32",
                                "--threads", "2", "--tmax", "2", "--seed", "5", "--arch", "repvgg-cifar"};
  a.insert(a.end(), more.begin(), more.end());
  return a;
}

TEST_CASE("qat: a RepQ-BN run from --init resumes bit-exactly mid-epoch; ./ptq reads it at its learned steps") {
  fs::path root = fresh_temp_dir("qat_resume");
  fs::path data = make_cifar(root / "cifar", 16, 40);  // 80 training images: 2 batches of 32 a epoch
  fs::path fp = root / "fp", whole = root / "whole", split = root / "split";
  REQUIRE(run(args_for(data, fp, {"--epochs", "1", "--oabn-k", "3"})) == 0);
  const std::vector<std::string> qat = {"--qat", "repq-bn", "--bits", "6", "--granularity", "channel", "--oabn-k", "3",
                                        "--init", (fp / "last.safetensors").string(), "--lr", "0.01"};
  auto with = [&](std::vector<std::string> a, std::vector<std::string> b) {
    a.insert(a.end(), b.begin(), b.end());
    return a;
  };
  REQUIRE(run(args_for(data, whole, with(qat, {"--epochs", "2"}))) == 0);
  train::request_interrupt();  // after the first step
  CHECK(run(args_for(data, split, with(qat, {"--epochs", "2"}))) == 130);
  std::vector<std::string> resume = {"--resume", split.string()};
  REQUIRE(train::run_training(parse_options(resume), resume) == 0);

  st::File a = st::load((whole / "last.safetensors").string()), b = st::load((split / "last.safetensors").string());
  CHECK(a.metadata.at("qat") == "repq-bn");
  CHECK(a.tensors.count("stage1.0.weight_quant.step"));
  CHECK(a.tensors.count("optim.stage1.0.weight_quant.step"));  // the steps' momentum buffers
  CHECK(a.tensors.at("stage1.0.weight_quant.step").shape == std::vector<int64_t>{64});
  REQUIRE(a.tensors.size() == b.tensors.size());
  size_t differing = 0;
  for (auto& [name, e] : a.tensors) differing += b.tensors.at(name).bytes != e.bytes;
  CHECK(differing == 0);
  const fs::path json = root / "ptq.json";
  REQUIRE(quant::run_ptq({"--ckpt", (whole / "last.safetensors").string(), "--data", data.string(), "--json", json.string(),
                          "--threads", "2"}) == 0);
  nlohmann::json j = nlohmann::json::parse(std::ifstream(json));
  CHECK(j["qat"] == "repq-bn");
  CHECK(j["results"][0]["bits"] == 6);
  CHECK_THROWS_WITH_AS(quant::run_ptq({"--ckpt", (whole / "last.safetensors").string(), "--data", data.string(), "--bits", "4"}),
                       doctest::Contains("is a QAT checkpoint (repq-bn)"), std::runtime_error);
  CHECK_THROWS_WITH_AS(quant::run_ptq({"--ckpt", (fp / "last.safetensors").string(), "--data", data.string()}),
                       doctest::Contains(("--bits B[,B...] is required for " + (fp / "last.safetensors").string()).c_str()),
                       std::runtime_error);
  fs::remove_all(root);
}

TEST_CASE("qat: LSQ's steps stay positive where SGD takes them through zero (the optimizer projects them)") {
  fs::path root = fresh_temp_dir("qat_steps");
  fs::path data = make_cifar(root / "cifar", 16, 40);
  fs::path fp = root / "fp", qat = root / "qat";
  REQUIRE(run(args_for(data, fp, {"--epochs", "1"})) == 0);
  REQUIRE(run(args_for(data, qat, {"--epochs", "2", "--qat", "repq-bn", "--bits", "4", "--granularity", "channel",
                                   "--init", (fp / "last.safetensors").string(), "--lr", "1"})) == 0);  // unprojected: a weight step at −0.11
  st::File f = st::load((qat / "last.safetensors").string());
  size_t steps = 0;
  for (auto& [name, e] : f.tensors) {
    if (name.rfind("optim.", 0) == 0 || !name.ends_with("_quant.step")) continue;
    steps++;
    for (float v : e.to_vector<float>()) REQUIRE_MESSAGE(v >= 1.1920929e-7f, name);
  }
  CHECK(steps > 20);
  fs::remove_all(root);
}

TEST_CASE("qat: --init of a missing, corrupt, other-arch or QAT checkpoint, a bad method or bit width: clear errors, nothing written") {
  fs::path root = fresh_temp_dir("qat_errors");
  fs::path data = make_cifar(root / "cifar", 4, 4);
  const fs::path fp = root / "fp";
  REQUIRE(run(args_for(data, fp, {"--epochs", "1", "--limit-train", "8", "--batch-size", "4", "--arch", "qarepvgg-cifar"})) == 0);
  const fs::path other_arch = fp / "last.safetensors", corrupt = root / "corrupt.safetensors";
  std::ofstream(corrupt) << "not a checkpoint at all";
  const fs::path oabn = root / "oabn.safetensors";
  {
    engine::Rng rng(1);
    models::RepVGG m(models::arch_config("repvgg-cifar"), rng, 3.0f);
    layers::save_checkpoint(oabn.string(), m, {{"arch", "repvgg-cifar"}, {"oabn_k", "3"}});
  }
  struct Case {
    std::vector<std::string> args;
    std::string message;
  };
  const fs::path out = root / "out";
  const std::vector<Case> cases = {
      {{"--qat", "repq-bn", "--init", (root / "missing.safetensors").string()}, "--init " + (root / "missing.safetensors").string() + ": no such checkpoint file"},
      {{"--qat", "repq-bn", "--init", corrupt.string()}, corrupt.string()},
      {{"--qat", "repq-bn", "--init", other_arch.string()}, "a qarepvgg-cifar checkpoint, but this run trains repvgg-cifar"},
      {{"--qat", "repq-bn", "--init", oabn.string()}, "trained with --oabn-k 3, this run has 0: give --oabn-k 3"},
  };
  for (const Case& c : cases) {
    INFO(c.message);
    CHECK_THROWS_WITH_AS(run(args_for(data, out, c.args)), doctest::Contains(c.message.c_str()), std::runtime_error);
    CHECK(!fs::exists(out));
  }
  CHECK_THROWS_WITH_AS(parse_options({"cifar10", "--qat", "repq"}), doctest::Contains("option --qat: 'repq' is not one of repq-bn"),
                       std::runtime_error);
  CHECK_THROWS_WITH_AS(parse_options({"cifar10", "--qat", "repq-bn", "--bits", "1"}), "option --bits: 1 is outside 2..16",
                       std::runtime_error);
  CHECK_THROWS_WITH_AS(parse_options({"cifar10", "--qat", "merged", "--act-bits", "17"}), "option --act-bits: 17 is outside 2..16",
                       std::runtime_error);
  CHECK_THROWS_WITH_AS(parse_options({"cifar10", "--granularity", "channel"}), doctest::Contains("need --qat METHOD"), std::runtime_error);
  // a QAT run's checkpoint is no --init: it is resumed
  const fs::path qat_run = root / "qat";
  REQUIRE(run(args_for(data, qat_run, {"--epochs", "1", "--limit-train", "8", "--batch-size", "4", "--arch", "qarepvgg-cifar",
                                       "--qat", "repq-bnest", "--init", other_arch.string()})) == 0);
  CHECK_THROWS_WITH_AS(run(args_for(data, out, {"--qat", "repq-bn", "--arch", "qarepvgg-cifar", "--init",
                                                (qat_run / "last.safetensors").string()})),
                       doctest::Contains("a QAT checkpoint (repq-bnest)"), std::runtime_error);
  CHECK(!fs::exists(out));
  // ... but a --qat bnest run trained the full-precision model: RepQ's BNEst pipeline starts RepQ-BNEst from it
  const fs::path bnest = root / "bnest", pipeline = root / "pipeline";
  REQUIRE(run(args_for(data, bnest, {"--epochs", "1", "--limit-train", "8", "--batch-size", "4", "--arch", "qarepvgg-cifar",
                                     "--qat", "bnest", "--init", other_arch.string()})) == 0);
  REQUIRE(run(args_for(data, pipeline, {"--epochs", "1", "--limit-train", "8", "--batch-size", "4", "--arch", "qarepvgg-cifar",
                                        "--qat", "repq-bnest", "--init", (bnest / "last.safetensors").string()})) == 0);
  const st::File started = st::load((bnest / "last.safetensors").string()), ended = st::load((pipeline / "last.safetensors").string());
  CHECK(ended.metadata.at("qat") == "repq-bnest");
  CHECK(ended.tensors.count("stage1.0.weight_quant.step"));
  size_t branch_tensors = 0;  // the same train-form tensors, quantizers added
  for (const auto& [name, e] : started.tensors)
    if (name.rfind("optim.", 0) != 0 && ended.tensors.count(name)) branch_tensors++;
  CHECK(branch_tensors > 100);
  // ... and ./ptq quantizes it as the full-precision model it is (the pipeline's PTQ column), through ./infer
  const fs::path json = root / "ptq.json", int8 = root / "bnest.int8.safetensors";
  REQUIRE(quant::run_ptq({"--ckpt", (bnest / "last.safetensors").string(), "--data", data.string(), "--limit-val", "8",
                          "--bits", "8", "--granularity", "channel", "--json", json.string(), "--export", int8.string()}) == 0);
  const nlohmann::json j = nlohmann::json::parse(std::ifstream(json));
  CHECK(j.at("results").at(0).at("bits") == 8);
  CHECK(deploy::load_int8(int8.string()).method == "ptq-minmax");
  CHECK(quant::run_infer({"--model", int8.string(), "--data", data.string(), "--limit-val", "8"}) == 0);
  fs::remove_all(root);
}

// --distill: the loss (1 − w) CE + w T² KL(teacher ‖ student). w = 0 is the run without it bit for bit (the
// teacher changes nothing it should not); w > 0 trains other weights; the teacher's file is untouched and a
// distilled run resumes bit-exactly mid-epoch.
TEST_CASE("qat --distill: w 0 is the plain run bit for bit, w 0.5 another; resumes bit-exactly; the teacher checked") {
  fs::path root = fresh_temp_dir("qat_distill");
  fs::path data = make_cifar(root / "cifar", 16, 40);
  const fs::path fp = root / "fp";
  REQUIRE(run(args_for(data, fp, {"--epochs", "1", "--oabn-k", "3"})) == 0);
  const std::string teacher = (fp / "last.safetensors").string();
  const std::vector<std::string> qat = {"--qat", "repq-bn", "--bits", "4", "--oabn-k", "3", "--init", teacher, "--lr", "0.01",
                                        "--epochs", "2"};
  auto with = [&](std::vector<std::string> a, std::vector<std::string> b) {
    a.insert(a.end(), b.begin(), b.end());
    return a;
  };
  auto same = [](const fs::path& x, const fs::path& y) {
    const st::File a = st::load((x / "last.safetensors").string()), b = st::load((y / "last.safetensors").string());
    size_t differing = a.tensors.size() == b.tensors.size() ? 0 : 1;
    for (auto& [name, e] : a.tensors) differing += !b.tensors.count(name) || b.tensors.at(name).bytes != e.bytes;
    return differing == 0;
  };
  const std::string teacher_bytes = [&] {
    std::ifstream in(teacher, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  }();
  REQUIRE(run(args_for(data, root / "plain", qat)) == 0);
  REQUIRE(run(args_for(data, root / "w0", with(qat, {"--distill", teacher, "--distill-w", "0"}))) == 0);
  REQUIRE(run(args_for(data, root / "w05", with(qat, {"--distill", teacher, "--distill-t", "2"}))) == 0);
  CHECK(same(root / "plain", root / "w0"));
  CHECK_FALSE(same(root / "plain", root / "w05"));
  std::ifstream in(teacher, std::ios::binary);
  CHECK(std::string(std::istreambuf_iterator<char>(in), {}) == teacher_bytes);
  std::ifstream cfg(root / "w05" / "config.json");
  const nlohmann::json j = nlohmann::json::parse(cfg);
  CHECK(j["options"]["distill"] == teacher);
  CHECK(j["options"]["distill_t"] == 2.0);

  // interrupted after its first step and resumed: the same weights as the whole run
  train::request_interrupt();
  CHECK(run(args_for(data, root / "split", with(qat, {"--distill", teacher, "--distill-t", "2"}))) == 130);
  std::vector<std::string> resume = {"--resume", (root / "split").string()};
  REQUIRE(train::run_training(parse_options(resume), resume) == 0);
  CHECK(same(root / "w05", root / "split"));

  // a teacher of another arch, of other classes, a QAT one, a missing file; bad T and w: named, nothing written
  const fs::path other = root / "other";
  REQUIRE(run(args_for(data, other, {"--epochs", "1", "--limit-train", "32", "--arch", "qarepvgg-cifar"})) == 0);
  st::File five = st::load(teacher);
  five.tensors["linear.weight"].shape = {5, 128};  // the same bytes, read as 5 classes
  five.tensors["linear.bias"].shape = {2, 5};
  st::save((root / "five.safetensors").string(), five);
  const fs::path out = root / "out";
  const std::vector<std::pair<std::string, std::string>> cases = {
      {(other / "last.safetensors").string(), "a qarepvgg-cifar checkpoint, the student is repvgg-cifar"},
      {(root / "five.safetensors").string(), "tensor 'linear.weight' has shape [5, 128], the student has 10 classes"},
      {(root / "plain" / "last.safetensors").string(), "a QAT checkpoint (repq-bn); the teacher is a full-precision one"},
      {(root / "missing.safetensors").string(), "no such checkpoint file"},
  };
  for (const auto& [file, message] : cases) {
    INFO(message);
    CHECK_THROWS_WITH_AS(run(args_for(data, out, with(qat, {"--distill", file}))), doctest::Contains(("--distill " + file + ": " + message).c_str()),
                         std::runtime_error);
    CHECK(!fs::exists(out));
  }
  CHECK_THROWS_WITH_AS(parse_options({"cifar10", "--distill", teacher, "--distill-w", "1.5"}), "option --distill-w: 1.5 is outside [0, 1]",
                       std::runtime_error);
  CHECK_THROWS_WITH_AS(parse_options({"cifar10", "--distill", teacher, "--distill-t", "0"}), doctest::Contains("option --distill-t: must be positive"),
                       std::runtime_error);
  CHECK_THROWS_WITH_AS(parse_options({"cifar10", "--distill-t", "2"}), "--distill-t and --distill-w need --distill TEACHER", std::runtime_error);
  fs::remove_all(root);
}

// --layer-bits in QAT: the widths kept in the checkpoint and read back; layers left in float have no
// quantizers; the int8 export keeps them in float; ClusterQAT codebooks of several sizes survive the
// compressed file; a spec of no layer, or without --qat, is refused before anything is written.
TEST_CASE("qat --layer-bits: per-layer widths through the checkpoint, ./ptq, the int8 and the compressed export") {
  fs::path root = fresh_temp_dir("qat_layer_bits");
  fs::path data = make_cifar(root / "cifar", 16, 40);
  const fs::path fp = root / "fp";
  // lr 0.01: at the default 0.1 two steps on these 80 images diverge (val loss ~200), and whether 4-bit QAT
  // from there overflows depended on float rounding (the convolution algorithm).
  REQUIRE(run(args_for(data, fp, {"--epochs", "1", "--lr", "0.01"})) == 0);
  const std::string init = (fp / "last.safetensors").string();
  auto qat = [&](const fs::path& out, std::vector<std::string> more) {
    std::vector<std::string> a = {"--epochs", "1", "--init", init, "--lr", "0.01"};
    a.insert(a.end(), more.begin(), more.end());
    return run(args_for(data, out, a));
  };
  REQUIRE(qat(root / "repq", {"--qat", "repq-bn", "--bits", "4", "--act-bits", "8", "--layer-bits", "stage1.*=fp32,stage4.0=8/6"}) == 0);
  const st::File f = st::load((root / "repq" / "last.safetensors").string());
  CHECK(f.metadata.at("layer_bits").rfind("fp32,fp32,fp32,fp32,fp32,4/8,", 0) == 0);
  CHECK(f.metadata.at("layer_bits").substr(f.metadata.at("layer_bits").size() - 9) == ",8/6,fp32");
  CHECK(!f.tensors.count("stage1.0.act_quant.step"));
  CHECK(f.tensors.count("stage2.0.act_quant.step"));
  quant::SourceOptions so;
  so.ckpt = (root / "repq" / "last.safetensors").string();
  auto model = quant::load_model(quant::resolve_source(so));
  const std::vector<models::QuantLayer> layers = model->quant_layers();
  CHECK(!layers[1].quant->act);
  CHECK(layers[5].quant->weight->bits == 4);
  REQUIRE(layers[25].quant->weight);
  CHECK(layers[25].quant->weight->bits == 8);  // stage4.0
  const std::string int8 = (root / "m.int8.safetensors").string();
  CHECK(layers[25].quant->act->bits == 6);
  // several widths in one int8 file: stage3's last block writes stage4.0's 6-bit codes
  REQUIRE(quant::run_ptq({"--ckpt", so.ckpt, "--limit-val", "8", "--export", int8}) == 0);
  const deploy::Int8Model w = deploy::load_int8(int8);
  CHECK(w.layers[5].widths == models::LayerBits{4, 8});
  CHECK(w.layers[25].widths == models::LayerBits{8, 6});
  CHECK(deploy::width_summary(w) == "W4/A8 x20, W8/A6 x1");

  REQUIRE(qat(root / "float", {"--qat", "repq-bn", "--bits", "6", "--layer-bits", "stage2.*=fp32"}) == 0);
  REQUIRE(quant::run_ptq({"--ckpt", (root / "float" / "last.safetensors").string(), "--limit-val", "8", "--export", int8}) == 0);
  const deploy::Int8Model m = deploy::load_int8(int8);
  CHECK_FALSE(m.layers[5].quantized);  // stage2.0
  CHECK(m.layers[4].quantized);        // stage1.3

  REQUIRE(qat(root / "cluster", {"--qat", "cluster", "--bits", "4", "--act-bits", "8", "--layer-bits", "stage2.*=2/6,stage1.0=fp32"}) == 0);
  const std::string packed = (root / "c.safetensors").string();
  REQUIRE(quant::run_ptq({"--ckpt", (root / "cluster" / "last.safetensors").string(), "--limit-val", "8", "--export", packed}) == 0);
  const st::File c = st::load(packed);
  CHECK(c.tensors.at("stage2.0.weight_quant.codebook").numel() == 4);
  CHECK(c.tensors.at("stage1.1.weight_quant.codebook").numel() == 16);
  const deploy::Int8Model cm = deploy::load_deploy_model(packed);
  CHECK_FALSE(cm.layers[1].quantized);
  CHECK(cm.layers[5].quantized);
  CHECK(cm.layers[4].widths == models::LayerBits{8, 8});  // stage1.3: its codes on the s8 grid
  CHECK(cm.layers[5].widths == models::LayerBits{8, 6});  // stage2.0

  const fs::path out = root / "out";
  CHECK_THROWS_WITH_AS(qat(out, {"--qat", "repq-bn", "--layer-bits", "stage7.*=4"}), doctest::Contains("'stage7.*' names no layer"),
                       std::runtime_error);
  CHECK_THROWS_WITH_AS(qat(out, {"--qat", "repq-bn", "--layer-bits", "stage1.0=1"}), doctest::Contains("1 weight bits is outside 2..16"),
                       std::runtime_error);
  CHECK(!fs::exists(out));
  CHECK_THROWS_WITH_AS(parse_options({"cifar10", "--layer-bits", "stage1.0=4"}), doctest::Contains("need --qat METHOD"), std::runtime_error);
  fs::remove_all(root);
}
