// AdaRound (quant/adaround.h): Eq. 22-24 against their definitions in double, with finite-difference
// gradients; the start point and the β schedule; on a small RepVGG, every weight lands on ⌊W/s⌋ or ⌈W/s⌉ of its
// quantizer's grid and the layers reconstruct better than with nearest rounding; ./ptq --method adaround.
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "datasets/cifar10.h"
#include "datasets/loader.h"
#include "engine/ops.h"
#include "engine/random.h"
#include "quant/adaround.h"
#include "quant/ptq.h"
#include "tests/int8_testing.h"
#include "tests/gradcheck.h"
#include "tests/testing.h"

namespace fs = std::filesystem;
using engine::Tensor;
using testing_util::check_close;
using testing_util::check_gradients;

static double h_ref(double v) { return std::clamp(1 / (1 + std::exp(-v)) * 1.2 - 0.1, 0.0, 1.0); }

TEST_CASE("adaround: the rectified sigmoid (Eq. 23), the regularizer (Eq. 24) and W~ (Eq. 22) against their definitions") {
  engine::Rng rng(5);
  const Tensor v = engine::rand_uniform({4, 3, 3, 3}, -4, 4, rng);  // some beyond the clip: h 0 or 1
  std::vector<double> h;
  for (float e : v.to_vector()) h.push_back(h_ref(e));
  check_close(quant::rectified_sigmoid(v).to_vector(), h, 1e-6, 1e-7, "h(V)");
  for (float beta : {20.f, 2.f}) {
    double reg = 0;
    for (double e : h) reg += 1 - std::pow(std::fabs(2 * e - 1), beta);
    CHECK(quant::rounding_regularizer(v, beta).item() == doctest::Approx(reg).epsilon(1e-5));
  }
  const Tensor w_floor = engine::rand_uniform({4, 3, 3, 3}, -9, 8, rng);  // codes beyond [-7, 7] too
  std::vector<float> fl = w_floor.to_vector();
  for (float& e : fl) e = std::floor(e);
  const std::vector<float> steps = {0.5f, 0.25f, 1.f, 2.f};
  const Tensor s = Tensor::from_vector(steps, {4, 1, 1, 1});
  std::vector<double> w;
  for (size_t k = 0; k < fl.size(); k++) w.push_back(steps[k / 27] * std::clamp(fl[k] + h[k], -7.0, 7.0));
  check_close(quant::soft_quantized_weight(Tensor::from_vector(fl, {4, 3, 3, 3}), v, s, -7, 7).to_vector(), w, 1e-6, 1e-7,
              "W~");
  // A 0 regularizer where every h is 0 or 1, the most (one a weight) where every h is 1/2.
  CHECK(quant::rounding_regularizer(Tensor::full({5}, 10.f), 2.f).item() == 0.f);
  CHECK(quant::rounding_regularizer(Tensor::full({5}, 0.f), 2.f).item() == doctest::Approx(5.f));
}

TEST_CASE("adaround: gradients of h, the regularizer and W~ with respect to V") {
  engine::Rng rng(6);
  const Tensor v = engine::rand_uniform({3, 2, 3, 3}, -2.2f, 2.2f, rng);  // inside the clip: h in (0, 1)
  const Tensor fl = engine::rand_uniform({3, 2, 3, 3}, -3, 3, rng), s = Tensor::from_vector({0.5f, 1.f, 0.2f}, {3, 1, 1, 1});
  check_gradients([](auto& in) { return quant::rectified_sigmoid(in[0]); }, {v});
  check_gradients([](auto& in) { return quant::rounding_regularizer(in[0], 4.f); }, {v});
  check_gradients([&](auto& in) { return quant::soft_quantized_weight(fl, in[0], s, -7, 7); }, {v});
}

TEST_CASE("adaround: V starts where h(V) = W/s - floor(W/s), and beta anneals from 20 to 2 after the warm-up") {
  for (float r : {0.f, 0.1f, 0.5f, 0.93f, 0.999f}) CHECK(h_ref(quant::initial_v(r)) == doctest::Approx(r).epsilon(1e-5));
  quant::AdaRoundOptions o;
  o.iters = 1000;
  CHECK(quant::annealed_beta(0, o) == 20.f);
  CHECK(quant::annealed_beta(200, o) == 20.f);
  CHECK(quant::annealed_beta(600, o) == doctest::Approx(11.f));
  CHECK(quant::annealed_beta(1000, o) == doctest::Approx(2.f));
}

TEST_CASE("adaround: on a small RepVGG every weight lands on floor or ceil of W/s, and the layers reconstruct better than nearest") {
  // the integer tests' small model, deployed and calibrated by ./ptq's functions: its blocks at W3/A8
  const QuantizedSmall q = quantized_small(8, quant::Granularity::channel, false, "stage?.*=3/8");
  models::Model& m = *q.model;
  auto train = data::open_cifar10(small_cifar().string(), true);
  data::Loader loader(*train, 16, /*train=*/false, 0, 1);
  const std::vector<models::QuantLayer> layers = m.quant_layers();
  std::vector<std::vector<float>> before;
  for (const models::QuantLayer& l : layers) before.push_back(l.weight.to_vector());

  quant::AdaRoundOptions o;
  o.iters = 300;
  o.images = 40;
  o.batch = 8;
  const std::vector<quant::AdaRoundLayer> report = quant::adaround(m, loader, o, engine::Device::cpu);
  REQUIRE(report.size() == layers.size() - 2);  // stage0 and the FC are FP32
  // A heuristic, not an exact minimizer: most layers, and the layers together, reconstruct better than nearest.
  double flipped = 0, nearest = 0, learned = 0;
  size_t better = 0;
  for (const quant::AdaRoundLayer& r : report) {
    CAPTURE(r.name);
    CHECK(r.nearest_error > 0);
    flipped += r.flipped;
    nearest += r.nearest_error;
    learned += r.adaround_error;
    better += r.adaround_error < r.nearest_error;
  }
  CHECK(flipped > 0);  // it did not just round to nearest
  CHECK(learned < nearest);
  CHECK(better >= report.size() * 3 / 4);
  for (size_t i = 0; i < layers.size(); i++) {
    CAPTURE(layers[i].name);
    const std::vector<float> w = layers[i].weight.to_vector();
    if (!layers[i].quant->weight) {
      CHECK(w == before[i]);
      continue;
    }
    const std::vector<float> steps = layers[i].quant->weight->step.to_vector();
    const size_t per = w.size() / steps.size();
    for (size_t k = 0; k < w.size(); k++) {
      const float s = steps[k / per], code = w[k] / s, orig = before[i][k] / s;
      REQUIRE(std::fabs(code - std::nearbyint(code)) < 1e-4);  // on the grid
      REQUIRE(std::fabs(code) <= 3.f + 1e-4f);
      REQUIRE((std::nearbyint(code) == std::floor(orig) || std::nearbyint(code) == std::ceil(orig) ||
               std::fabs(orig) > 3.f));  // up or down, or clipped
    }
  }
}

TEST_CASE("adaround: ./ptq --method adaround writes each layer's errors; bad values named") {
  const fs::path root = fresh_temp_dir("adaround_ptq");
  const fs::path data = make_cifar(root / "cifar", 4, 12);
  const fs::path ckpt = root / "m.safetensors";
  save_random_repvgg_cifar(ckpt);
  const fs::path json = root / "ptq.json";
  const std::vector<std::string> base = {"--ckpt", ckpt.string(), "--data", data.string(), "--threads", "2", "--bits", "4",
                                         "--act-bits", "8", "--limit-val", "12", "--batch-size", "6", "--calib-batches", "2"};
  auto with = [&](std::vector<std::string> more) {
    std::vector<std::string> a = base;
    a.insert(a.end(), more.begin(), more.end());
    return a;
  };
  REQUIRE(quant::run_ptq(with({"--method", "adaround", "--adaround-iters", "10", "--adaround-images", "12",
                               "--adaround-target", "fp32", "--json", json.string()})) == 0);
  nlohmann::json j = nlohmann::json::parse(std::ifstream(json));
  CHECK(j["rounding"] == "adaround");
  CHECK(j["adaround"]["target"] == "fp32");
  CHECK(j["results"][0]["adaround"].size() == 25);
  CHECK(j["results"][0]["adaround"][0]["name"] == "stage1.0");
  CHECK_THROWS_WITH_AS(quant::run_ptq(with({"--method", "floor"})), doctest::Contains("option --method: 'floor' is not nearest or adaround"),
                       std::runtime_error);
  CHECK_THROWS_WITH_AS(quant::run_ptq(with({"--adaround-iters", "0"})), doctest::Contains("--adaround-iters"), std::runtime_error);
  CHECK_THROWS_WITH_AS(quant::run_ptq(with({"--adaround-target", "int8"})),
                       doctest::Contains("option --adaround-target: 'int8' is not quantized or fp32"), std::runtime_error);
  CHECK_THROWS_WITH_AS(quant::run_ptq(with({"--method", "adaround", "--sensitivity"})),
                       doctest::Contains("--method adaround quantizes a model; --sensitivity measures"), std::runtime_error);
  fs::remove_all(root);
}
