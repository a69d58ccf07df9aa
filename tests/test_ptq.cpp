// ./ptq and ./inspect through their library entry points (run_ptq, run_inspect), on a repvgg-cifar model
// with random weights saved in a temporary run folder beside a small made-up CIFAR-10 folder: the JSON
// they write, the settings they read from config.json or the checkpoint's metadata, and clear errors for
// a checkpoint of another arch, a corrupt file and bad options.
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "engine/autograd.h"
#include "engine/cuda/cuda_backend.h"
#include "engine/ops.h"
#include "engine/random.h"
#include "layers/checkpoint.h"
#include "models/repvgg.h"
#include "quant/inspect.h"
#include "quant/ptq.h"
#include "quant/run_source.h"
#include "tests/testing.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// A run folder as ./train writes it: best.safetensors (a model of `arch`, random weights, BN statistics of
// one training-mode forward) and config.json naming `config_arch`.
fs::path make_run(const fs::path& dir, const fs::path& data, const models::ArchConfig& arch, const std::string& config_arch,
                  bool deploy = false) {
  fs::create_directories(dir);
  engine::Rng rng(3);
  models::RepVGG model(arch, rng);
  model.forward(engine::rand_normal({4, 3, 32, 32}, 0.0f, 1.0f, rng));
  model.eval();
  if (deploy) model.switch_to_deploy();
  layers::save_checkpoint((dir / "best.safetensors").string(), model,
                          {{"arch", config_arch}, {"dataset", "cifar10"}, {"oabn_k", "0"}, {"num_classes", "10"}});
  json cfg = {{"options", {{"dataset", "cifar10"}, {"arch", config_arch}, {"data", data.string()}, {"oabn_k", 0.0}}},
              {"data_dir", data.string()}, {"num_classes", 10}};
  std::ofstream(dir / "config.json") << cfg.dump(2);
  return dir / "best.safetensors";
}

// doctest::Contains of a std::string
doctest::Contains has(const std::string& s) { return doctest::Contains(doctest::String(s.c_str())); }

// Runs with `dir` as the working directory, then goes back (the default checkpoint is relative to it).
struct InDir {
  fs::path previous = fs::current_path();
  explicit InDir(const fs::path& dir) { fs::current_path(dir); }
  ~InDir() { fs::current_path(previous); }
};

json read_json(const fs::path& p) { return json::parse(std::ifstream(p)); }

// The FP32 top-1 (%) of the checkpoint on the first `n` images of its evaluation split, computed here
// apart from ./ptq's evaluation: one batch, an argmax per row.
double fp32_top1(const fs::path& ckpt, size_t n) {
  quant::SourceOptions o;
  o.ckpt = ckpt.string();
  quant::Source s = quant::resolve_source(o);
  auto model = quant::load_model(s);
  auto ds = quant::open_split(s, false, n);
  REQUIRE(ds->size() == n);
  std::vector<float> x(n * 3 * 32 * 32);
  for (size_t i = 0; i < n; i++) ds->load(i, false, 0, &x[i * 3 * 32 * 32]);
  engine::NoGradGuard g;
  engine::Tensor logits = model->forward(engine::Tensor::from_vector(x, {int64_t(n), 3, 32, 32}));
  const float* l = logits.f32();
  int right = 0;
  for (size_t i = 0; i < n; i++)
    right += int(std::max_element(l + i * 10, l + i * 10 + 10) - (l + i * 10)) == ds->label(i);
  return 100.0 * right / double(n);
}

const models::ArchConfig kCifar = models::arch_config("repvgg-cifar");

}  // namespace

TEST_CASE("ptq: the entry point on a tiny run folder writes the table's JSON; deploy-form checkpoints too") {
  fs::path root = fresh_temp_dir("ptq_run");
  fs::path data = make_cifar(root / "cifar", 4, 12);
  fs::path ckpt = make_run(root / "run", data, kCifar, "repvgg-cifar");
  fs::path out = root / "ptq.json";
  const std::vector<std::string> common = {"--limit-val", "12", "--batch-size", "6", "--calib-batches", "2", "--threads", "2"};

  std::vector<std::string> args = {"--ckpt", ckpt.string(), "--bits", "8", "--json", out.string()};
  args.insert(args.end(), common.begin(), common.end());
  REQUIRE(quant::run_ptq(args) == 0);
  json j = read_json(out);
  CHECK(j["arch"] == "repvgg-cifar");
  CHECK(j["config"] == (root / "run" / "config.json").string());
  CHECK(j["simulated"] == true);
  CHECK(j["first_last"] == "fp32");
  CHECK(j["rounding"] == "half to even");
  CHECK(j["val_images"] == 12);
  CHECK(j["activations"]["calib_batches"] == 2);
  CHECK(j["activations"]["calib_images"] == 12);
  CHECK(j["activations"]["calibration"] == "minmax");
  CHECK(j["weights"]["granularity"] == "layer");
  REQUIRE(j["results"].size() == 1);
  const json& r = j["results"][0];
  CHECK(r["bits"] == 8);
  CHECK(r["act_bits"] == 8);
  // Top-1 over the 12 images: the FP32 one as computed here, the 8-bit one a whole number of images.
  CHECK(j["fp32"]["top1"].get<double>() == doctest::Approx(fp32_top1(ckpt, 12)));
  const double right8 = r["top1"].get<double>() * 12 / 100;
  CHECK(right8 == doctest::Approx(std::round(right8)));
  CHECK(r["drop_top1"].get<double>() == doctest::Approx(j["fp32"]["top1"].get<double>() - r["top1"].get<double>()));
  CHECK(!j["fp32"].contains("top5"));  // CIFAR-10: top-1 only
  REQUIRE(r["layers"].size() == 25);  // 26 blocks and the FC, less stage0 and the FC (FP32)
  CHECK(r["layers"][0]["name"] == "stage1.0");
  CHECK(r["layers"][0]["act_lo"] == 0.0);  // a ReLU output
  CHECK(r["layers"][0]["act_hi"].get<double>() > 0);

  // Other options: two bit widths with one activation width, per-channel weights, MSE calibration.
  args = {"--ckpt", ckpt.string(), "--bits", "8,4", "--act-bits", "8", "--granularity", "channel", "--calib", "mse",
          "--quantize-first-last", "--json", out.string()};
  args.insert(args.end(), common.begin(), common.end());
  REQUIRE(quant::run_ptq(args) == 0);
  json k = read_json(out);
  REQUIRE(k["results"].size() == 2);
  CHECK(k["results"][1]["bits"] == 4);
  CHECK(k["results"][1]["act_bits"] == 8);
  CHECK(k["weights"]["granularity"] == "channel");
  CHECK(k["activations"]["calibration"] == "mse");
  CHECK(k["first_last"] == "quantized");
  CHECK(k["results"][0]["layers"].size() == 27);
  CHECK(k["results"][0]["layers"][0]["act_lo"].get<double>() < 0);  // the normalized image
  CHECK(k["fp32"]["top1"] == j["fp32"]["top1"]);

  // The same model saved in deploy form, without config.json: arch and dataset from its metadata.
  fs::path dep = make_run(root / "deploy", data, kCifar, "repvgg-cifar", true);
  fs::remove(root / "deploy" / "config.json");
  args = {"--ckpt", dep.string(), "--data", data.string(), "--bits", "8", "--json", out.string()};
  args.insert(args.end(), common.begin(), common.end());
  REQUIRE(quant::run_ptq(args) == 0);
  json d = read_json(out);
  CHECK(d["config"] == "");
  CHECK(d["fp32"]["top1"] == j["fp32"]["top1"]);
  CHECK(d["results"][0]["top1"] == j["results"][0]["top1"]);
  fs::remove_all(root);
}

TEST_CASE("ptq: a checkpoint of another arch, a corrupt file, a missing arch: clear errors naming the file") {
  fs::path root = fresh_temp_dir("ptq_errors");
  fs::path data = make_cifar(root / "cifar", 2, 4);
  // saved from a narrower CIFAR model, but its config.json says repvgg-cifar (64 wide)
  fs::path narrow = make_run(root / "narrow", data, models::cifar_config(models::BlockType::repvgg, 16), "repvgg-cifar");
  CHECK_THROWS_WITH_AS(quant::run_ptq({"--ckpt", narrow.string(), "--bits", "8"}),
                       has("file " + narrow.string() + ": tensor 'stage0.rbr_dense.conv.weight' has shape [16, 3, 3, 3]"),
                       std::runtime_error);
  // a QARepVGG checkpoint loaded as a RepVGG one
  fs::path qa = make_run(root / "qa", data, models::arch_config("qarepvgg-cifar"), "repvgg-cifar");
  CHECK_THROWS_WITH_AS(quant::run_ptq({"--ckpt", qa.string(), "--bits", "8"}), has("file " + qa.string()),
                       std::runtime_error);
  CHECK_THROWS_WITH_AS(quant::run_inspect({"--ckpt", narrow.string()}), has("file " + narrow.string()),
                       std::runtime_error);

  fs::path corrupt = root / "corrupt.safetensors";
  std::ofstream(corrupt) << "this is not a safetensors file";
  CHECK_THROWS_WITH_AS(quant::run_ptq({"--ckpt", corrupt.string(), "--bits", "8"}), has("file " + corrupt.string()),
                       std::runtime_error);
  CHECK_THROWS_WITH_AS(quant::run_ptq({"--ckpt", (root / "none.safetensors").string(), "--bits", "8"}),
                       doctest::Contains("none.safetensors does not exist"), std::runtime_error);

  // no config.json and no metadata: --arch is asked for
  fs::path bare = root / "bare.safetensors";
  engine::Rng rng(1);
  models::RepVGG model(kCifar, rng);
  layers::save_checkpoint(bare.string(), model);
  CHECK_THROWS_WITH_AS(quant::run_ptq({"--ckpt", bare.string(), "--bits", "8"}),
                       has(bare.string() + ": no config.json beside it and no \"arch\" in its metadata"),
                       std::runtime_error);

  // a broken config.json
  std::ofstream(root / "narrow" / "config.json") << "{ not json";
  CHECK_THROWS_WITH_AS(quant::run_ptq({"--ckpt", narrow.string(), "--bits", "8"}),
                       has((root / "narrow" / "config.json").string() + ": not valid JSON"), std::runtime_error);
  fs::remove_all(root);
}

TEST_CASE("ptq options: required --bits, ranges, lists, unknown options, --device cuda without a GPU") {
  using quant::parse_ptq_options;
  CHECK_THROWS_WITH_AS(parse_ptq_options({"--bits", "8,1"}), doctest::Contains("option --bits: must be at least 2, got 1"),
                       std::runtime_error);
  CHECK_THROWS_WITH_AS(parse_ptq_options({"--bits", "8,x"}), doctest::Contains("'x' is not a valid integer"), std::runtime_error);
  CHECK_THROWS_WITH_AS(parse_ptq_options({"--bits", "32"}), doctest::Contains("32 is more than 16"), std::runtime_error);
  CHECK_THROWS_WITH_AS(parse_ptq_options({"--bits", "8,6,4", "--act-bits", "8,8"}), doctest::Contains("--act-bits has 2 values for 3"),
                       std::runtime_error);
  CHECK_THROWS_WITH_AS(parse_ptq_options({"--bits", "8", "--calib", "kl"}), doctest::Contains("'kl' is not one of"), std::runtime_error);
  CHECK_THROWS_WITH_AS(parse_ptq_options({"--bits", "8", "--frob"}), doctest::Contains("unknown option '--frob'"), std::runtime_error);
  CHECK_THROWS_WITH_AS(parse_ptq_options({"--bits", "8", "--ckpt"}), doctest::Contains("option --ckpt needs a value"), std::runtime_error);
  const quant::PtqOptions o = parse_ptq_options({"--bits", "8,6,4", "--granularity", "channel", "--calib", "percentile",
                                                 "--calib-batches", "4", "--limit-val", "100", "--quantize-first-last"});
  CHECK(o.bits == std::vector<int>{8, 6, 4});
  CHECK(o.act_bits.empty());
  CHECK(o.granularity == quant::Granularity::channel);
  CHECK(o.calib == quant::CalibMethod::percentile);
  CHECK(o.calib_batches == 4);
  CHECK(o.source.limit_val == 100);
  CHECK(o.quantize_first_last);
  CHECK(parse_ptq_options({"--help"}).help);
  if (!engine::cuda::available())
    CHECK_THROWS_WITH_AS(quant::run_ptq({"--bits", "8", "--device", "cuda", "--ckpt", "/nonexistent"}),
                         has(engine::cuda::unavailable_reason()), std::runtime_error);
}

TEST_CASE("inspect: per-block outlier statistics and the train/deploy difference, as JSON") {
  fs::path root = fresh_temp_dir("ptq_inspect");
  fs::path data = make_cifar(root / "cifar", 2, 8);
  fs::path ckpt = make_run(root / "run", data, kCifar, "repvgg-cifar");
  fs::path out = root / "inspect.json", hist = root / "hist";
  REQUIRE(quant::run_inspect({"--ckpt", ckpt.string(), "--batch-size", "4", "--json", out.string(), "--hist", hist.string()}) == 0);
  json j = read_json(out);
  CHECK(j["form"] == "train");
  CHECK(j["batch"].get<std::string>().find("4 validation images") != std::string::npos);
  REQUIRE(j["blocks"].size() == 26);
  const json& s0 = j["blocks"][0];
  CHECK(s0["name"] == "stage0");
  CHECK(s0["identity"] == false);
  CHECK(s0["mean_abs_a"].is_null());
  CHECK(s0["identity_bn_max_scale"].is_null());
  const json& b = j["blocks"][2];  // stage1.1: 64 -> 64, stride 1, identity
  CHECK(b["name"] == "stage1.1");
  CHECK(b["identity"] == true);
  CHECK(b["count_a"] == 64);
  CHECK(b["count_b"] == 64 * 64 - 64);
  CHECK(b["count_c"] == 64 * 64 * 8);
  CHECK(b["identity_bn_max_scale"].get<double>() > 0);
  CHECK(b["mean_abs_a"].get<double>() > b["mean_abs_b"].get<double>());
  for (const json& blk : j["blocks"]) CHECK(blk["rel_diff"].get<double>() < 1e-4);
  CHECK(j["logits_max_abs_diff"].get<double>() < 1e-4 * j["logits_max_abs"].get<double>());
  CHECK(fs::exists(hist / "stage1.1.png"));
  CHECK(fs::file_size(hist / "stage1.1.png") > 100);

  // Without --ckpt: runs/latest/best.safetensors, the last ./train run.
  fs::create_directories(root / "runs");
  fs::create_directory_symlink(root / "run", root / "runs" / "latest");
  {
    InDir in(root);
    REQUIRE(quant::run_inspect({"--batch-size", "2", "--json", out.string()}) == 0);
  }
  CHECK(read_json(out)["checkpoint"] == "runs/latest/best.safetensors");
  CHECK(read_json(out)["config"] == "runs/latest/config.json");
  {
    InDir in(data);  // no runs/ here
    CHECK_THROWS_WITH_AS(quant::run_ptq({"--bits", "8"}),
                         doctest::Contains("no --ckpt given and runs/latest/best.safetensors does not exist"), std::runtime_error);
  }

  // Without data: a random batch, and it says so.
  fs::remove_all(data);
  REQUIRE(quant::run_inspect({"--ckpt", ckpt.string(), "--batch-size", "2", "--json", out.string()}) == 0);
  CHECK(read_json(out)["batch"].get<std::string>().find("random") != std::string::npos);

  // A deploy-form checkpoint: the kernels only.
  fs::path dep = make_run(root / "deploy", data, kCifar, "repvgg-cifar", true);
  REQUIRE(quant::run_inspect({"--ckpt", dep.string(), "--json", out.string()}) == 0);
  json d = read_json(out);
  CHECK(d["form"] == "deploy");
  CHECK(d["blocks"][2]["max_abs_diff"].is_null());
  CHECK(d["blocks"][2]["max_abs"] == j["blocks"][2]["max_abs"]);
  fs::remove_all(root);
}

TEST_CASE("ptq: bad metadata, a linear layer of 0 classes, a FIFO config.json: errors naming the file and key") {
  fs::path root = fresh_temp_dir("ptq_bad_source");
  fs::path data = make_cifar(root / "cifar", 2, 4);
  const std::string ckpt = make_run(root / "run", data, kCifar, "repvgg-cifar").string();
  const fs::path cfg = root / "run" / "config.json";
  auto source_error = [&] {
    quant::SourceOptions o;
    o.ckpt = ckpt;
    try {
      quant::resolve_source(o);
    } catch (const std::exception& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  CHECK(source_error() == "");
  CHECK(error_reading_fifo(cfg, [&] { throw std::runtime_error(source_error()); }) == cfg.string() + ": not a regular file");
  fs::remove(cfg);

  const st::File good = st::load(ckpt);
  st::File f = good;
  f.metadata["oabn_k"] = "lots";
  st::save(ckpt, f);
  CHECK(source_error() == "file " + ckpt + ": metadata \"oabn_k\" is 'lots', expected a finite number in [0, inf]");
  f = good;
  f.tensors.erase("linear.weight");
  f.metadata["num_classes"] = "-3";
  st::save(ckpt, f);
  CHECK(source_error() == "file " + ckpt + ": metadata \"num_classes\" is '-3', expected an integer in [1, 2147483647]");
  f = good;
  f.tensors["linear.weight"] = st::Entry::of<float>({0, 64}, std::vector<float>{});
  st::save(ckpt, f);
  CHECK(source_error() == "file " + ckpt + ": tensor 'linear.weight' has 0 rows, expected one a class");
  fs::remove_all(root);
}

TEST_CASE("ptq: a checkpoint of other classes than the data, and one whose activations overflow: the file and what") {
  fs::path root = fresh_temp_dir("ptq_bad_models");
  fs::path data = make_cifar(root / "cifar", 4, 12);
  // 5 classes evaluated on CIFAR-10 (it stopped in the loss: "check_label_range: label 5 of row 64 ...")
  models::ArchConfig five = kCifar;
  five.num_classes = 5;
  fs::path ckpt = make_run(root / "five", data, five, "repvgg-cifar");
  CHECK_THROWS_WITH_AS(quant::run_ptq({"--ckpt", ckpt.string(), "--bits", "8"}),
                       has(ckpt.string() + ": the model has 5 classes, the cifar10 data 10 (labels up to 9)"),
                       std::runtime_error);
  // finite but huge parameters: two blocks' dense BNs scale by 1e30 each, so stage1.2's output (1e60)
  // overflows float32 and stage1.3's input is infinite ("asymmetric_params: bad activation range [inf, inf]"
  // before)
  fs::path dir = root / "huge";
  ckpt = make_run(dir, data, kCifar, "repvgg-cifar");
  st::File f = st::load(ckpt.string());
  for (const char* name : {"stage1.1.rbr_dense.bn.weight", "stage1.2.rbr_dense.bn.weight"}) {
    st::Entry& g = f.tensors.at(name);
    g = st::Entry::of<float>(g.shape, std::vector<float>(g.numel(), 1e30f));
  }
  st::save(ckpt.string(), f);
  CHECK_THROWS_WITH_AS(quant::run_ptq({"--ckpt", ckpt.string(), "--bits", "8"}),
                       has(ckpt.string() + ": the input of layer stage1.3 is not finite on the calibration images"),
                       std::runtime_error);
  fs::remove_all(root);
}

