// ./train: option defaults and errors, the run folder, resume equality, the non-finite-loss stop.
// Runs on a small made-up CIFAR-10 folder (random pixels) so that it is quick and needs no data set.
#include <fmt/format.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <nlohmann/json.hpp>

#include "engine/cuda/cuda_backend.h"
#include "engine/random.h"
#include "engine/safetensors.h"
#include "tests/testing.h"
#include "trainer/options.h"
#include "trainer/trainer.h"

namespace fs = std::filesystem;
using train::Options;
using train::parse_options;

TEST_CASE("train options: the OABN paper's defaults per dataset") {
  Options c = parse_options({"cifar10"});
  CHECK(c.arch == "repvgg-cifar");
  CHECK(c.batch_size == 128);
  CHECK(c.epochs == 450);
  CHECK(c.sched == "cosine");
  CHECK(c.tmax == 50);
  CHECK(c.lr == doctest::Approx(0.1));
  CHECK(c.momentum == doctest::Approx(0.9));
  CHECK(c.wd == doctest::Approx(1e-4));
  CHECK(c.label_smoothing == 0);
  CHECK(c.oabn_k == 0);

  Options i = parse_options({"imagenet"});
  CHECK(i.arch == "repvgg-a0");
  CHECK(i.batch_size == 256);
  CHECK(i.sched == "step");
  CHECK(i.epochs == 120);
  CHECK(i.step_size == 30);
  CHECK(i.gamma == doctest::Approx(0.1));
  Options k3 = parse_options({"imagenet", "--oabn-k", "3"});  // k < 5: 160 epochs, decay every 40
  CHECK(k3.epochs == 160);
  CHECK(k3.step_size == 40);
  Options k5 = parse_options({"imagenet", "--oabn-k=5"});
  CHECK(k5.epochs == 120);
  CHECK(k5.step_size == 30);
  Options set = parse_options({"cifar10", "--epochs", "4", "--tmax", "4", "--batch-size", "64", "--nesterov"});
  CHECK(set.epochs == 4);
  CHECK(set.tmax == 4);
  CHECK(set.batch_size == 64);
  CHECK(set.nesterov);
}

TEST_CASE("train options: bad input gets a clear error") {
  CHECK_THROWS_WITH_AS(parse_options({"cifar10", "--lr", "fast"}), "option --lr: 'fast' is not a valid number", std::runtime_error);
  CHECK_THROWS_WITH_AS(parse_options({"cifar10", "--epochs", "-3"}), "option --epochs: must be positive, got -3", std::runtime_error);
  CHECK_THROWS_WITH_AS(parse_options({"cifar10", "--sched", "linear"}), doctest::Contains("not one of cosine, step"), std::runtime_error);
  CHECK_THROWS_WITH_AS(parse_options({"cifar10", "--frobnicate"}), doctest::Contains("unknown option '--frobnicate'"), std::runtime_error);
  CHECK_THROWS_WITH_AS(parse_options({"cifar10", "--epochs"}), doctest::Contains("needs a value"), std::runtime_error);
  CHECK_THROWS_WITH_AS(parse_options({"mnist"}), doctest::Contains("'mnist' is not one of cifar10, imagenet"), std::runtime_error);
  CHECK_THROWS_WITH_AS(parse_options({}), doctest::Contains("no dataset given"), std::runtime_error);
  CHECK_THROWS_WITH_AS(parse_options({"cifar10", "--label-smoothing", "-0.1"}), "option --label-smoothing: must be in [0, 1], got -0.1",
                       std::runtime_error);
  CHECK(parse_options({"cifar10", "--label-smoothing", "1"}).label_smoothing == 1.f);
  // 100000 threads started that many, and hung: at most 4 a core
  CHECK_THROWS_WITH_AS(parse_options({"cifar10", "--threads", "100000"}),
                       doctest::Contains("option --threads: 100000 threads is more than 4 for each of this machine's"),
                       std::runtime_error);
  CHECK(parse_options({"cifar10", "--threads", "2"}).threads == 2);
}

static std::vector<std::string> args_for(const fs::path& data, const fs::path& out, std::vector<std::string> more) {
  std::vector<std::string> a = {"cifar10", "--data", data.string(), "--out", out.string(), "--batch-size", "32",
                                "--threads", "2", "--tmax", "2", "--seed", "5"};
  a.insert(a.end(), more.begin(), more.end());
  return a;
}

static int run(const std::vector<std::string>& args) { return train::run_training(parse_options(args), args); }

// log.csv without the timing columns (seconds, images_per_s).
static std::vector<std::string> log_values(const fs::path& run) {
  std::ifstream in(run / "log.csv");
  std::vector<std::string> rows;
  std::string line;
  while (std::getline(in, line)) rows.push_back(line.substr(0, line.rfind(',', line.rfind(',') - 1)));
  return rows;
}

TEST_CASE("train: a run folder, and a resumed run equals an uninterrupted one") {
  fs::path root = fresh_temp_dir("train_resume");
  fs::path data = make_cifar(root / "cifar", 16, 40);  // 80 training images: 2 batches of 32 a epoch
  fs::path whole = root / "runs" / "whole", split = root / "runs" / "split";

  REQUIRE(run(args_for(data, whole, {"--epochs", "2", "--oabn-k", "3"})) == 0);
  for (auto f : {"config.json", "log.csv", "last.safetensors", "best.safetensors"}) CHECK(fs::exists(whole / f));
  CHECK(fs::is_symlink(root / "runs" / "latest"));
  nlohmann::json cfg = nlohmann::json::parse(std::ifstream(whole / "config.json"));
  CHECK(cfg["options"]["oabn_k"] == 3.0);
  CHECK(cfg["threads"] == 2);
  CHECK(cfg.contains("git_commit"));
  CHECK(log_values(whole).size() == 3);  // header and two epochs
  CHECK(log_values(whole)[0] == "epoch,lr,train_loss,train_top1,val_loss,val_top1");

  // Interrupted after its first step (as Ctrl-C does), then resumed twice: mid-epoch, then for epoch 2.
  train::request_interrupt();
  CHECK(run(args_for(data, split, {"--epochs", "1", "--oabn-k", "3"})) == 130);
  CHECK(fs::exists(split / "last.safetensors"));
  std::vector<std::string> resume1 = {"--resume", split.string()};
  REQUIRE(train::run_training(parse_options(resume1), resume1) == 0);
  std::vector<std::string> resume2 = {"--resume", (split / "last.safetensors").string(), "--epochs", "2"};
  REQUIRE(train::run_training(parse_options(resume2), resume2) == 0);

  CHECK(log_values(split) == log_values(whole));
  st::File a = st::load((whole / "last.safetensors").string()), b = st::load((split / "last.safetensors").string());
  REQUIRE(a.tensors.size() == b.tensors.size());
  size_t differing = 0;
  for (auto& [name, e] : a.tensors) differing += b.tensors.at(name).bytes != e.bytes;
  CHECK(differing == 0);
  fs::remove_all(root);
}

TEST_CASE("train: a non-finite loss stops the run and keeps the last good checkpoint") {
  fs::path root = fresh_temp_dir("train_nan");
  fs::path data = make_cifar(root / "cifar", 16, 20);
  fs::path out = root / "run";
  REQUIRE(run(args_for(data, out, {"--epochs", "1"})) == 0);
  auto before = st::load((out / "last.safetensors").string()).tensors;
  // An infinite learning rate makes the weights non-finite after the first step of epoch 2.
  std::vector<std::string> more = {"--resume", out.string(), "--epochs", "3", "--lr", "inf"};
  CHECK(train::run_training(parse_options(more), more) == 3);
  CHECK(st::load((out / "last.safetensors").string()).tensors.at("linear.weight").bytes == before.at("linear.weight").bytes);
  // In the first epoch there is no checkpoint yet (the message says so), and none is written.
  const fs::path fresh = root / "fresh";
  std::vector<std::string> early = args_for(data, fresh, {"--epochs", "1", "--lr", "inf"});
  CHECK(train::run_training(parse_options(early), early) == 3);
  CHECK(!fs::exists(fresh / "last.safetensors"));
  fs::remove_all(root);
}

TEST_CASE("train: clear errors for a missing data folder, an unknown arch, an arch without OABN") {
  fs::path root = fresh_temp_dir("train_errors");
  fs::path data = make_cifar(root / "cifar", 4, 4);
  auto missing = args_for(root / "nowhere", root / "r1", {"--epochs", "1"});
  CHECK_THROWS_WITH_AS(run(missing), doctest::Contains("nowhere"), std::runtime_error);
  CHECK_THROWS_WITH_AS(run(args_for(data, root / "r2", {"--arch", "resnet50"})), doctest::Contains("unknown arch 'resnet50'"),
                       std::runtime_error);
  CHECK_THROWS_WITH_AS(run(args_for(data, root / "r3", {"--arch", "qarepvgg-cifar", "--oabn-k", "3"})),
                       doctest::Contains("no identity-branch BN"), std::runtime_error);
  CHECK_THROWS_WITH_AS(run({"imagenet", "--epochs", "1"}), doctest::Contains("imagenet needs --data"), std::runtime_error);
  if (!engine::cuda::available()) {  // fails at once: before reading data or writing a run folder
    CHECK_THROWS_WITH_AS(run(args_for(root / "nowhere", root / "r4", {"--device", "cuda"})),
                         doctest::Contains(engine::cuda::unavailable_reason().c_str()), std::runtime_error);
    CHECK(!fs::exists(root / "r4"));
  }
  fs::remove_all(root);
}

TEST_CASE("train: --resume refuses bad metadata, config.json and log.csv, naming the file and key") {
  fs::path root = fresh_temp_dir("train_bad_resume");
  fs::path data = make_cifar(root / "cifar", 8, 8);  // 40 training images: one batch of 32 a epoch
  fs::path out = root / "run";
  REQUIRE(run(args_for(data, out, {"--epochs", "1", "--limit-val", "4"})) == 0);
  const std::string ckpt = (out / "last.safetensors").string();
  const st::File good = st::load(ckpt);
  std::vector<std::string> resume = {"--resume", out.string()};
  auto resume_error = [&] {
    try {
      train::run_training(parse_options(resume), resume);
    } catch (const std::exception& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  struct Case { const char* key; const char* value; const char* expected; };
  const Case cases[] = {
      {"batch", "-1", "an integer in [0, 1]"},  // wrapped to 2^64 - 1 and spun in the skip-ahead loop
      {"batch", "99999999999", "an integer in [0, 1]"},
      {"epoch", "7", "an integer in [0, 1]"},
      {"epoch", "one", "an integer in [0, 1]"},
      {"best_top1", "101", "a finite number in [-1, 100]"},
      {"partial_loss", "nan", "a finite number in [0, inf]"},
      {"partial_seen", "-5", "a finite number in [0, inf]"},
  };
  for (const Case& c : cases) {
    st::File f = good;
    f.metadata[c.key] = c.value;
    st::save(ckpt, f);
    CHECK(resume_error() == fmt::format("file {}: metadata \"{}\" is '{}', expected {}", ckpt, c.key, c.value, c.expected));
  }
  st::File f = good;
  f.metadata.erase("partial_correct");
  st::save(ckpt, f);
  CHECK(resume_error() == fmt::format("file {}: metadata \"partial_correct\" is missing (expected a finite number in [0, inf])", ckpt));
  st::save(ckpt, good);

  // momentum buffers of the wrong shape or dtype: refused at the load, naming the file and the tensor (they
  // reached the first step as "step: momentum buffer ...")
  const std::string momentum = "optim.stage1.0.rbr_dense.conv.weight";
  REQUIRE(good.tensors.count(momentum));
  const st::Entry& m = good.tensors.at(momentum);
  REQUIRE(m.shape == std::vector<int64_t>{64, 64, 3, 3});
  struct Bad { st::Entry entry; std::string problem; };
  const std::vector<Bad> bad = {
      {st::Entry::of<float>({32, 64, 3, 3}, std::vector<float>(32 * 64 * 9)), "has shape [32, 64, 3, 3], expected [64, 64, 3, 3]"},
      {st::Entry::of<int32_t>({64, 64, 3, 3}, std::vector<int32_t>(64 * 64 * 9)), "has dtype I32, expected F32"},
      {st::Entry::of<float>({64 * 64 * 9}, std::vector<float>(64 * 64 * 9)), "has shape [36864], expected [64, 64, 3, 3]"},
  };
  for (const Bad& b : bad) {
    st::File g = good;
    g.tensors[momentum] = b.entry;
    st::save(ckpt, g);
    CHECK(resume_error() == fmt::format("file {}: tensor '{}' {}", ckpt, momentum, b.problem));
  }
  st::save(ckpt, good);

  const fs::path log = out / "log.csv";
  fs::copy_file(log, root / "log.csv");
  std::ofstream(log, std::ios::app) << "x,1,2\n";
  CHECK(resume_error() == fmt::format("{}: row 'x,1,2' does not start with an epoch number", log.string()));
  fs::remove(log);
  CHECK(error_reading_fifo(log, [&] { throw std::runtime_error(resume_error()); }) ==
        log.string() + ": not a regular file");
  fs::remove(log);
  fs::copy_file(root / "log.csv", log);

  const fs::path cfg = out / "config.json";
  const std::string cfg_text = (std::stringstream() << std::ifstream(cfg).rdbuf()).str();
  std::ofstream(cfg) << R"({"argv": [1, 2]})";
  CHECK(resume_error().starts_with(cfg.string() + ": expected \"argv\", the original command line as a list of strings"));
  std::ofstream(cfg) << "[]";
  CHECK(resume_error().starts_with(cfg.string() + ": expected \"argv\""));
  std::ofstream(cfg) << R"({"argv": ["cifar10", "--label-smoothing", "2"]})";  // it reached cross_entropy's own check
  CHECK(resume_error() == cfg.string() + " (the run's command line, with this one's options after it): option "
                                         "--label-smoothing: must be in [0, 1], got 2");
  fs::remove(cfg);
  CHECK(error_reading_fifo(cfg, [&] { throw std::runtime_error(resume_error()); }) ==
        "--resume " + out.string() + ": " + cfg.string() + " is missing or not a regular file");
  fs::remove(cfg);
  std::ofstream(cfg) << cfg_text;
  CHECK(resume_error() == "");
  fs::remove_all(root);
}

TEST_CASE("train options: --max-image-pixels, 64 megapixels by default") {
  CHECK(parse_options({"imagenet"}).max_image_pixels == 67108864);
  CHECK(parse_options({"imagenet", "--max-image-pixels", "1000"}).max_image_pixels == 1000);
  CHECK_THROWS_WITH_AS(parse_options({"imagenet", "--max-image-pixels", "0"}), "option --max-image-pixels: must be positive, got 0",
                       std::runtime_error);
  CHECK(train::help_text().find("--max-image-pixels N") != std::string::npos);
}
