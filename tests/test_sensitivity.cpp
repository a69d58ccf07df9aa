// ./ptq --sensitivity (quant/sensitivity.h): the logit KL against engine::distillation_loss at T = 1 (an
// independent implementation of the same KL), Spearman's rho against hand-computed cases, each layer's two
// measures against a model quantized by hand, and the program's table, JSON and plot.
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "datasets/cifar10.h"
#include "datasets/loader.h"
#include "engine/ops.h"
#include "engine/random.h"
#include "models/repvgg.h"
#include "deploy/int8_model.h"
#include "models/layer_bits.h"
#include "quant/export.h"
#include "quant/infer.h"
#include "quant/ptq.h"
#include "quant/sensitivity.h"
#include "tests/int8_testing.h"
#include "tests/testing.h"

namespace fs = std::filesystem;
using engine::Tensor;

TEST_CASE("sensitivity: logit_kl is the mean KL(p_ref || p), as distillation_loss at T 1 computes it") {
  engine::Rng rng(31);
  for (auto [n, k] : std::vector<std::pair<int64_t, int64_t>>{{5, 10}, {3, 1000}, {1, 2}}) {
    const Tensor ref = engine::rand_uniform({n, k}, -5, 5, rng), q = engine::rand_uniform({n, k}, -5, 5, rng);
    const double kl = quant::logit_kl(ref.to_vector(), q.to_vector(), k);
    CHECK(kl > 0);
    CHECK(kl == doctest::Approx(engine::distillation_loss(q, ref, 1.0f).item()).epsilon(1e-5));
    CHECK(quant::logit_kl(ref.to_vector(), ref.to_vector(), k) == doctest::Approx(0).epsilon(1e-12));
  }
  CHECK_THROWS_WITH(quant::logit_kl({1, 2, 3}, {1, 2}, 3), doctest::Contains("3 and 2 logits of 3 classes"));
}

TEST_CASE("sensitivity: Spearman's rho, ties at their mean rank") {
  CHECK(quant::spearman({1, 2, 3, 4}, {10, 20, 30, 40}) == doctest::Approx(1));
  CHECK(quant::spearman({1, 2, 3, 4}, {4, 1, 0, -7}) == doctest::Approx(-1));
  // ranks (1, 2.5, 2.5, 4) and (1, 3, 2, 4): 4.5 / sqrt(4.5 · 5) (scipy.stats.spearmanr: 0.9486832980505138)
  CHECK(quant::spearman({1, 2, 2, 3}, {1, 3, 2, 4}) == doctest::Approx(0.9486832980505138));
  CHECK(std::isnan(quant::spearman({1, 1, 1}, {1, 2, 3})));
  CHECK(std::isnan(quant::spearman({1}, {2})));
}

TEST_CASE("sensitivity: each layer's two measures are those of the model quantized by hand; the model is left FP32") {
  const fs::path root = fresh_temp_dir("sensitivity_layers");
  const fs::path data = make_cifar(root / "cifar", 4, 4);
  engine::Rng rng(7);
  models::RepVGG m(models::cifar_config(models::BlockType::repvgg, 16), rng);
  m.forward(engine::rand_normal({8, 3, 32, 32}, 0, 1, rng));  // BN statistics
  m.eval();
  m.switch_to_deploy();
  auto train = data::open_cifar10(data.string(), true);
  data::Loader loader(*train, 8, /*train=*/false, 0, 1);
  const quant::Calibration cal = quant::calibrate(m, loader, 2, quant::CalibMethod::minmax, engine::Device::cpu);
  const std::vector<Tensor> images = {engine::rand_normal({6, 3, 32, 32}, 0, 1, rng), engine::rand_normal({3, 3, 32, 32}, 0, 1, rng)};
  const std::vector<float> reference = quant::logits_of(m, images);
  quant::QuantConfig c;
  c.weight_bits = c.act_bits = 4;
  const std::vector<quant::LayerSensitivity> s = quant::layer_sensitivity(m, cal, c, images, reference);
  const std::vector<models::QuantLayer> layers = m.quant_layers();
  REQUIRE(s.size() == layers.size());
  CHECK(quant::logits_of(m, images) == reference);  // FP32 again
  for (size_t i : {size_t(0), size_t(1), size_t(5), layers.size() - 1}) {
    CAPTURE(layers[i].name);
    CHECK(s[i].name == layers[i].name);
    CHECK(s[i].identity == (!layers[i].fc && layers[i].in == layers[i].out && layers[i].stride == 1));
    quant::QuantConfig one = c;
    one.layers.assign(layers.size(), quant::LayerBits{});
    one.layers[i] = {4, 4};
    quant::attach_quantizers(m, one, cal);
    CHECK(s[i].alone == quant::logit_kl(reference, quant::logits_of(m, images), 10));
    one.layers.assign(layers.size(), quant::LayerBits{4, 4});
    one.layers[i] = {};
    quant::attach_quantizers(m, one, cal);
    CHECK(s[i].kept == quant::logit_kl(reference, quant::logits_of(m, images), 10));
    CHECK(s[i].alone > 0);
    CHECK(s[i].kept > 0);
  }
  CHECK(s[1].identity == false);  // stage1.0: stride 2
  CHECK(s[2].identity == true);   // stage1.1
  fs::remove_all(root);
}

TEST_CASE("ptq --sensitivity: a sorted table per bit width, JSON and a plot; --sensitivity-check ranks by top-1 too") {
  const fs::path root = fresh_temp_dir("sensitivity_program");
  const fs::path data = make_cifar(root / "cifar", 4, 12);
  save_random_repvgg_cifar(root / "fp.safetensors");
  const std::string json = (root / "s.json").string(), png = (root / "s.png").string();
  REQUIRE(quant::run_ptq({"--ckpt", (root / "fp.safetensors").string(), "--data", data.string(), "--bits", "4,6", "--sensitivity-check",
                          "--sensitivity-images", "12", "--limit-val", "12", "--batch-size", "6", "--calib-batches", "2",
                          "--threads", "2", "--json", json, "--plot", png}) == 0);
  const nlohmann::json j = nlohmann::json::parse(std::ifstream(json));
  REQUIRE(j["sensitivity"].size() == 2);
  const nlohmann::json& w4 = j["sensitivity"][0];
  CHECK(w4["bits"] == 4);
  CHECK(w4["images"] == 12);
  REQUIRE(w4["layers"].size() == 27);  // stage0, the 25 blocks, the FC
  for (size_t i = 1; i < 27; i++) CHECK(w4["layers"][i - 1]["alone_kl"].get<double>() >= w4["layers"][i]["alone_kl"].get<double>());
  CHECK(w4["layers"][0].contains("alone_top1"));
  CHECK(w4.contains("spearman"));
  CHECK(fs::file_size(png) > 100);
  CHECK_THROWS_WITH(quant::parse_ptq_options({"--bits", "4", "--plot", png}), doctest::Contains("--plot draws --sensitivity's measure"));
  CHECK_THROWS_WITH(quant::parse_ptq_options({"--bits", "4", "--sensitivity", "--export", "x"}),
                    doctest::Contains("--sensitivity measures, --export writes a model"));
  CHECK_THROWS_WITH(quant::parse_ptq_options({"--sensitivity-images", "0"}), doctest::Contains("option --sensitivity-images: must be at least 1"));
  fs::remove_all(root);
}

TEST_CASE("--layer-bits: globs, fp32 and widths, later entries win; bad entries named") {
  CHECK(models::glob_match("stage2.*", "stage2.10"));
  CHECK(models::glob_match("stage?.0", "stage3.0"));
  CHECK(models::glob_match("*", "linear"));
  CHECK(models::glob_match("s*.1*", "stage3.11"));
  CHECK_FALSE(models::glob_match("stage2.*", "stage20"));
  CHECK_FALSE(models::glob_match("stage1.1", "stage1.10"));
  const std::vector<std::string> names = {"stage0", "stage1.0", "stage1.1", "stage2.0", "linear"};
  const std::vector<quant::LayerBits> base = {{}, {8, 8}, {8, 8}, {8, 8}, {}};
  const auto b = models::apply_layer_spec("stage1.*=4,stage1.1=fp32,linear=6,stage2.0=3/5", names, base, 7);
  CHECK(b[0].weight == 0);
  CHECK((b[1].weight == 4 && b[1].act == 8));  // W: the input keeps its width
  CHECK(b[2].weight == 0);
  CHECK((b[3].weight == 3 && b[3].act == 5));
  CHECK((b[4].weight == 6 && b[4].act == 7));  // FP32 before: the default input width
  CHECK_THROWS_WITH(models::apply_layer_spec("stage9.*=4", names, base, 8),
                    "option --layer-bits: 'stage9.*' names no layer (the layers: stage0, stage1.0, stage1.1, stage2.0, linear)");
  CHECK_THROWS_WITH(models::apply_layer_spec("stage1.0=17", names, base, 8),
                    "option --layer-bits: 'stage1.0=17': the value is fp32, W or W/A, widths 1..16");
  CHECK_THROWS_WITH(models::apply_layer_spec("stage1.0=fp16", names, base, 8), doctest::Contains("the value is fp32, W or W/A"));
  CHECK_THROWS_WITH(models::apply_layer_spec("stage1.0=4/", names, base, 8), doctest::Contains("the value is fp32, W or W/A"));
  CHECK_THROWS_WITH(models::apply_layer_spec("stage1.0", names, base, 8), doctest::Contains("'stage1.0' is not PATTERN=VALUE"));
  CHECK_THROWS_WITH(models::apply_layer_spec("stage1.0=8,", names, base, 8), doctest::Contains("'' is not PATTERN=VALUE"));
}

TEST_CASE("ptq --layer-bits and --keep-fp32: the layers left in float are not quantized; the int8 export holds them") {
  const fs::path root = fresh_temp_dir("mixed_program");
  const fs::path data = make_cifar(root / "cifar", 4, 12);
  save_random_repvgg_cifar(root / "fp.safetensors");
  const std::string json = (root / "p.json").string();
  const std::vector<std::string> common = {"--ckpt", (root / "fp.safetensors").string(), "--data", data.string(), "--limit-val", "12",
                                           "--batch-size", "6", "--calib-batches", "2", "--threads", "2", "--json", json,
                                           "--sensitivity-images", "12"};
  auto with = [&](std::vector<std::string> more) {
    std::vector<std::string> a = common;
    a.insert(a.end(), more.begin(), more.end());
    return a;
  };
  REQUIRE(quant::run_ptq(with({"--bits", "8", "--layer-bits", "stage1.*=fp32,stage4.0=6"})) == 0);
  nlohmann::json j = nlohmann::json::parse(std::ifstream(json));
  const nlohmann::json& layers = j["results"][0]["layers"];
  CHECK(layers.size() == 25 - 4);
  for (const auto& l : layers) CHECK(std::string(l["name"]).rfind("stage1.", 0) != 0);
  CHECK(layers.back()["name"] == "stage4.0");
  CHECK(layers.back()["bits"] == 6);
  CHECK(layers.back()["act_bits"] == 8);

  const std::string file = (root / "m.int8.safetensors").string();
  REQUIRE(quant::run_ptq(with({"--bits", "8", "--keep-fp32", "3", "--export", file})) == 0);
  j = nlohmann::json::parse(std::ifstream(json));
  CHECK(j["results"][0]["layers"].size() == 25 - 3);
  const deploy::Int8Model m = deploy::load_int8(file);
  int fp32 = 0;
  for (const deploy::Int8Layer& l : m.layers) fp32 += !l.quantized;
  CHECK(fp32 == 2 + 3);
  // several widths in one int8 file, which ./infer runs
  REQUIRE(quant::run_ptq(with({"--bits", "8", "--layer-bits", "stage2.*=4,stage4.0=6/5,stage3.0=fp32", "--export", file})) == 0);
  const deploy::Int8Model widths = deploy::load_int8(file);
  CHECK(deploy::width_summary(widths) == "W8/A8 x15, W4/A8 x8, W6/A5 x1");
  CHECK(quant::run_infer({"--model", file, "--data", data.string(), "--limit-val", "12", "--batch-size", "6", "--threads", "2"}) == 0);
  CHECK_THROWS_WITH(quant::run_ptq(with({"--bits", "8", "--layer-bits", "stage4.0=1"})), doctest::Contains("1-bit widths are ClusterQAT's"));
  CHECK_THROWS_WITH(quant::parse_ptq_options({"--bits", "8", "--keep-fp32", "2", "--sensitivity"}), doctest::Contains("--keep-fp32 quantizes a model"));

  // ./export --qdq: no Q/DQ nodes around the layers kept in float
  auto onnx = [&](std::vector<std::string> more) {
    const fs::path out = root / "m.onnx";
    std::vector<std::string> a = {"--ckpt", (root / "fp.safetensors").string(), "--data", data.string(), "--onnx", out.string(),
                                  "--qdq", "--bits", "8", "--calib-batches", "2", "--batch-size", "6", "--threads", "2"};
    a.insert(a.end(), more.begin(), more.end());
    REQUIRE(quant::run_export(a) == 0);
    std::ifstream in(out, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  const std::string all = onnx({}), mixed = onnx({"--layer-bits", "stage2.*=fp32"});
  CHECK(all.find("stage2.0.act_quant") != std::string::npos);
  CHECK(mixed.find("stage2.0.act_quant") == std::string::npos);
  CHECK(mixed.find("stage3.0.act_quant") != std::string::npos);
  fs::remove_all(root);
}
