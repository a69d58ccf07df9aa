// ./train's TensorBoard events (trainer/tensorboard_log.h) read back by tensorboard's EventAccumulator:
// the per-epoch values are log.csv's, the per-step ones cover every step once across a resume, and the
// QAT step sizes are the checkpoint's.
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <numeric>
#include <sstream>

#include "engine/safetensors.h"
#include "layers/checkpoint.h"
#include "tests/interop_testing.h"
#include "tests/testing.h"
#include "trainer/options.h"
#include "trainer/trainer.h"

namespace fs = std::filesystem;

namespace {

using Scalars = std::map<std::string, std::map<int64_t, double>>;  // tag -> step -> value

Scalars parse_scalars(const std::string& output, int& files) {
  Scalars s;
  std::istringstream in(output);
  std::string word;
  in >> word >> files;
  REQUIRE(word == "files");
  std::string tag;
  int64_t step;
  double value;
  while (in >> tag >> step >> value) s[tag][step] = value;
  return s;
}

// log.csv as column -> one value per epoch (empty cells as NaN).
std::map<std::string, std::vector<double>> read_log(const fs::path& path) {
  std::ifstream in(path);
  std::string line, cell;
  std::getline(in, line);
  std::vector<std::string> header;
  for (std::istringstream h(line); std::getline(h, cell, ',');) header.push_back(cell);
  std::map<std::string, std::vector<double>> cols;
  while (std::getline(in, line)) {
    std::istringstream r(line);
    for (const std::string& name : header) {
      std::getline(r, cell, ',');
      cols[name].push_back(cell.empty() ? NAN : std::stod(cell));
    }
  }
  return cols;
}

}  // namespace

TEST_CASE("train: TensorBoard events hold log.csv's values, every step once across a resume, the QAT steps" *
          skip_unless(python_has({"tensorboard"}), "train events: " + python_needs({"tensorboard"}, "make test installs it with pip"))) {
  TempDir root;
  const fs::path data = make_cifar(root.path / "cifar", 16, 40);  // 80 training images: 2 batches of 32 a epoch
  const fs::path run = root.path / "run";
  const std::vector<std::string> args = {"cifar10", "--data", data.string(), "--out", run.string(), "--batch-size", "32",
                                         "--threads", "2", "--tmax", "2", "--seed", "5", "--epochs", "2",
                                         "--qat", "repq-bn", "--bits", "8", "--granularity", "channel"};
  train::request_interrupt();  // after the first step
  REQUIRE(train::run_training(train::parse_options(args), args) == 130);
  const std::vector<std::string> resume = {"--resume", run.string()};
  REQUIRE(train::run_training(train::parse_options(resume), resume) == 0);

  const PythonRun r = run_python({"tests/interop/read_run_events.py", run.string()});
  REQUIRE_MESSAGE(r.rc == 0, r.output);
  int files = 0;
  Scalars s = parse_scalars(r.output, files);
  CHECK(files == 2);  // the interrupted run's and the resume's

  for (const char* tag : {"train/loss", "train/top1", "train/lr"}) {
    std::vector<int64_t> steps;
    for (auto& [step, v] : s[tag]) steps.push_back(step);
    CHECK_MESSAGE((steps == std::vector<int64_t>{1, 2, 3, 4}), tag);
  }
  // The last step's running values are the epoch's, as log.csv has them.
  auto log = read_log(run / "log.csv");
  REQUIRE(log["epoch"] == std::vector<double>{1, 2});
  CHECK(s["train/loss"][4] == doctest::Approx(log["train_loss"][1]).epsilon(1e-6));

  // log.csv rounds: the loss to 6 decimals, top-1 to 4, img/s to 2; the events hold float32.
  const std::map<std::string, double> columns = {{"train_loss", 1e-6}, {"train_top1", 1e-4}, {"val_loss", 1e-6},
                                                 {"val_top1", 1e-4}, {"images_per_s", 0.01}};
  for (auto& [col, tol] : columns)
    for (int e = 1; e <= 2; e++) {
      REQUIRE_MESSAGE(s["epoch/" + col].count(e), col << " epoch " << e);
      const double csv = log[col][e - 1];
      CHECK_MESSAGE(std::abs(s["epoch/" + col][e] - csv) <= tol + 1e-6 * std::abs(csv), col << " epoch " << e);
    }
  CHECK(s.count("epoch/val_top5") == 0);  // imagenet runs only

  // Each quantizer's step per epoch; epoch 2's is the mean of last.safetensors' (per channel here).
  const st::File last = st::load((run / "last.safetensors").string());
  int quantizers = 0;
  for (auto& [name, e] : last.tensors) {
    if (name.size() < 5 || name.substr(name.size() - 5) != ".step" || name.rfind("optim.", 0) == 0) continue;
    quantizers++;
    const std::string tag = "step/" + name.substr(0, name.size() - 5);
    const std::vector<float> v = layers::from_entry(e).to_vector();
    REQUIRE_MESSAGE(s[tag].size() == 2, tag);
    CHECK_MESSAGE(s[tag][2] == doctest::Approx(std::accumulate(v.begin(), v.end(), 0.0) / v.size()).epsilon(1e-6), tag);
  }
  CHECK(quantizers > 0);
  CHECK(s.count("step/stage1.0.weight_quant"));
  CHECK(s.count("step/stage1.0.act_quant"));
}
