// ClusterQAT (OABN paper Algorithm 2, layers/cluster_quantizer.h): each step against a plain reference,
// the straight-through gradient, a model's eval against its deploy form, resume, bad inputs.
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/optim.h"
#include "engine/safetensors.h"
#include "layers/checkpoint.h"
#include "layers/cluster_quantizer.h"
#include "models/repvgg.h"
#include "deploy/cluster_file.h"
#include "quant/deploy_export.h"
#include "quant/inspect.h"
#include "quant/ptq.h"
#include "tests/gradcheck.h"
#include "tests/testing.h"
#include "trainer/options.h"
#include "trainer/trainer.h"

namespace fs = std::filesystem;
using namespace engine;
using layers::ClusterQuantizer;

// The tie rule stated in layers/cluster_quantizer.h, by brute force: least |w − c| in float, then lower value,
// then lower index.
static std::vector<uint8_t> brute_force_assign(const std::vector<float>& w, const std::vector<float>& c) {
  std::vector<uint8_t> codes(w.size());
  for (size_t i = 0; i < w.size(); i++) {
    size_t best = 0;
    for (size_t k = 1; k < c.size(); k++) {
      const float d = std::fabs(w[i] - c[k]), db = std::fabs(w[i] - c[best]);
      if (d < db || (d == db && c[k] < c[best])) best = k;
    }
    codes[i] = (uint8_t)best;
  }
  return codes;
}

static std::vector<float> random_values(size_t n, float lo, float hi, uint64_t seed) {
  Rng rng(seed);
  return rand_uniform(Shape{(int64_t)n}, lo, hi, rng).to_vector();
}

TEST_CASE("cluster line 2: the codebook reset is linspace(min, max, 2^b), exact ends; a constant kernel gives one value") {
  std::vector<float> w = random_values(1000, -0.7f, 1.3f, 1);
  w[17] = -0.9f;
  w[400] = 2.5f;
  for (int bits : {1, 3, 8}) {
    const std::vector<float> c = layers::reset_codebook(w, bits);
    REQUIRE(c.size() == size_t(1) << bits);
    CHECK(c.front() == -0.9f);
    CHECK(c.back() == 2.5f);
    for (size_t k = 0; k < c.size(); k++) CHECK(c[k] == doctest::Approx(-0.9 + 3.4 * k / (c.size() - 1.0)).epsilon(1e-6));
  }
  for (float v : layers::reset_codebook(std::vector<float>(9, 0.25f), 2)) CHECK(v == 0.25f);
}

TEST_CASE("cluster line 5: nearest assignment against brute force, ties to the lower entry, unsorted and repeated entries") {
  std::vector<float> c = {0.5f, -1.0f, 0.0f, 1.0f, 0.5f, 3.0f, -0.25f, 2.0f};  // unsorted, 0.5 twice
  std::vector<float> w = random_values(5000, -2.0f, 4.0f, 2);
  for (float t : {0.25f, 0.75f, -0.625f, 1.5f, 2.5f, -0.125f, 0.5f, -5.0f, 9.0f}) w.push_back(t);  // midpoints: ties
  const std::vector<uint8_t> got = layers::assign_nearest(w, c);
  CHECK(got == brute_force_assign(w, c));
  const size_t n = w.size();
  CHECK(got[n - 9] == 2);  // 0.25: between 0 and 0.5, to 0
  CHECK(got[n - 8] == 0);  // 0.75: between 0.5 and 1, to 0.5, the first of the two 0.5 entries
  CHECK(got[n - 7] == 1);  // -0.625: between -1 and -0.25, to -1
  CHECK(got[n - 3] == 0);  // 0.5 itself: the lower index of the two
  CHECK(got[n - 2] == 1);  // below all: the least entry
  CHECK(got[n - 1] == 5);  // above all: the greatest
  for (int bits : {1, 4, 8}) {  // a random codebook of each size
    const std::vector<float> cb = random_values(size_t(1) << bits, -1, 1, 10 + bits);
    CHECK(layers::assign_nearest(w, cb) == brute_force_assign(w, cb));
  }
}

TEST_CASE("cluster line 6: each entry the mean of its weights, against a plain reference; empty entries keep their value") {
  const std::vector<float> w = random_values(3000, -1, 1, 3);
  std::vector<float> c = {-0.9f, -0.2f, 0.1f, 0.6f, 5.0f, -7.0f};  // 5 and -7: no weight is nearest to them
  const std::vector<uint8_t> codes = layers::assign_nearest(w, c);
  std::vector<float> updated = c;
  layers::update_centroids(w, codes, updated);
  for (size_t k = 0; k < c.size(); k++) {
    double sum = 0;
    int count = 0;
    for (size_t i = 0; i < w.size(); i++)
      if (codes[i] == k) sum += w[i], count++;
    INFO(k);
    if (count == 0) CHECK(updated[k] == c[k]);
    else CHECK(updated[k] == doctest::Approx(sum / count).epsilon(1e-6));
  }
  CHECK(updated[4] == 5.0f);
  CHECK(updated[5] == -7.0f);
  CHECK(updated[0] != c[0]);
}

TEST_CASE("cluster lines 8-10: values from the codebook, at most 2^b distinct; the gradient passes straight through") {
  Rng rng(4);
  Tensor m = rand_uniform({8, 4, 3, 3}, -1, 1, rng);
  m.requires_grad_(true);
  ClusterQuantizer q(3);
  Tensor y = q.forward(m);  // training: reset, assign, update
  const std::vector<float> v = y.to_vector(), cb = q.codebook.to_vector();
  const std::set<float> distinct(v.begin(), v.end());
  CHECK(distinct.size() <= 8);
  for (float x : distinct) CHECK(std::find(cb.begin(), cb.end(), x) != cb.end());
  CHECK(q.initialized());

  // L(W) = Σ r · W² at W = M̂: the straight-through gradient d L / d M is L's gradient at M̂, 2 r M̂. Compared
  // with central differences of L at M̂ (a wrong backward, e.g. one that stops at M̂ or scales it, fails).
  const Tensor r = rand_uniform(m.shape(), -1, 1, rng);
  sum_all(mul(square(y), r)).backward();
  const std::vector<float> g = m.grad().to_vector(), rv = r.to_vector();
  std::vector<double> numeric(v.size());
  const double h = 1e-3;
  for (size_t i = 0; i < v.size(); i++)
    numeric[i] = (rv[i] * std::pow(v[i] + h, 2) - rv[i] * std::pow(v[i] - h, 2)) / (2 * h);
  double diff = 0, norm = 0;
  for (size_t i = 0; i < v.size(); i++) diff += std::pow(g[i] - numeric[i], 2), norm += numeric[i] * numeric[i];
  CHECK(std::sqrt(diff / norm) < 1e-4);

  // eval: assigned to the codebook as it is, nothing updated
  q.eval();
  Tensor m2 = rand_uniform({8, 4, 3, 3}, -2, 2, rng);
  const std::vector<float> v2 = q.forward(m2).to_vector();
  CHECK(q.codebook.to_vector() == cb);
  CHECK(v2 == layers::codebook_values(layers::assign_nearest(m2.to_vector(), cb), cb));
}

TEST_CASE("cluster: a requested reset (each epoch start) runs in the next training forward, on that forward's kernel") {
  Rng rng(5);
  ClusterQuantizer q(2);
  q.forward(rand_uniform({6, 3, 3, 3}, -1, 1, rng));
  const std::vector<float> before = q.codebook.to_vector();
  const Tensor m = rand_uniform({6, 3, 3, 3}, -3, 0.5f, rng);
  q.forward(m);  // no reset: one more k-means step from the codebook it had
  std::vector<float> expected = before;
  layers::update_centroids(m.to_vector(), layers::assign_nearest(m.to_vector(), before), expected);
  CHECK(q.codebook.to_vector() == expected);
  q.request_reset();
  q.eval();
  q.forward(m);  // eval: no reset yet
  CHECK(q.codebook.to_vector() == expected);
  q.train();
  q.forward(m);  // line 2 on m, then lines 5-6
  expected = layers::reset_codebook(m.to_vector(), 2);
  layers::update_centroids(m.to_vector(), layers::assign_nearest(m.to_vector(), expected), expected);
  CHECK(q.codebook.to_vector() == expected);
  q.forward(m);  // the request was used up: a plain k-means step again
  std::vector<float> next = expected;
  layers::update_centroids(m.to_vector(), layers::assign_nearest(m.to_vector(), expected), next);
  CHECK(q.codebook.to_vector() == next);
}

static std::unique_ptr<models::Model> cluster_model(models::BlockType block, float oabn_k, int bits, bool first_last, uint64_t seed) {
  Rng rng(seed);
  auto m = std::make_unique<models::RepVGG>(models::cifar_config(block, 16), rng, oabn_k);
  m->set_qat({models::QatMethod::cluster, bits, bits, false, first_last, layers::StepInit::min_error});
  return m;
}

TEST_CASE("a ClusterQAT model: each layer at most 2^b weight values; eval logits equal its deploy form's and a reloaded checkpoint's") {
  struct Case {
    models::BlockType block;
    float oabn_k;
    int bits;
    bool first_last;
  };
  for (const Case& c : {Case{models::BlockType::repvgg, 3.0f, 2, true}, Case{models::BlockType::repvgg, 0.0f, 4, false},
                        Case{models::BlockType::qarepvgg, 0.0f, 3, false}, Case{models::BlockType::repvgg, 0.0f, 1, false}}) {
    INFO(c.bits);
    const auto model = cluster_model(c.block, c.oabn_k, c.bits, c.first_last, 4);
    models::Model& m = *model;
    const auto quantizers = m.cluster_quantizers();
    CHECK(quantizers.size() == m.blocks().size() - (c.first_last ? 0 : 1) + (c.first_last ? 1 : 0));
    CHECK(quantizers[0].first == (c.first_last ? "stage0" : "stage1.0"));
    Rng rng(8);
    Tensor x = rand_uniform({4, 3, 32, 32}, -1, 1, rng);
    Tensor labels = Tensor::zeros({4}, DType::i32);
    std::vector<Tensor> params;
    for (const layers::Param& p : m.parameters()) params.push_back(p.tensor);
    SGD sgd({ParamGroup{params, 0.0f}}, 0.01f);
    for (int step = 0; step < 2; step++) {
      sgd.zero_grad();
      cross_entropy(m.forward(x), labels).backward();
      sgd.step();
    }
    m.eval();
    NoGradGuard no_grad;
    const std::vector<float> eval_logits = m.forward(x).to_vector();

    const std::string path = "/tmp/repq_test_cluster.safetensors";
    layers::save_checkpoint(path, m, models::qat_metadata(*m.qat()));
    Rng r2(99);
    models::RepVGG loaded(m.arch, r2, c.oabn_k);
    loaded.set_qat(*models::qat_from_metadata(st::load(path).metadata, path));
    layers::load_checkpoint(path, loaded);
    loaded.eval();
    CHECK(loaded.forward(x).to_vector() == eval_logits);

    m.switch_to_deploy();
    CHECK(m.forward(x).to_vector() == eval_logits);
    for (auto& b : m.blocks()) {
      if (!b->quant.cluster) continue;
      const std::vector<float> w = b->quant.cluster->forward(b->rbr_reparam->weight).to_vector();
      CHECK(std::set<float>(w.begin(), w.end()).size() <= size_t(1) << c.bits);
    }
    fs::remove(path);
  }
}

TEST_CASE("a checkpoint with a codebook of the wrong length is refused naming the file and the tensor") {
  auto m = cluster_model(models::BlockType::repvgg, 0, 3, false, 5);
  const std::string path = "/tmp/repq_test_cluster_bad.safetensors";
  layers::save_checkpoint(path, *m, models::qat_metadata(*m->qat()));
  auto four = cluster_model(models::BlockType::repvgg, 0, 4, false, 5);
  CHECK_THROWS_WITH_AS(layers::load_checkpoint(path, *four), doctest::Contains(path.c_str()), std::runtime_error);
  CHECK_THROWS_WITH_AS(layers::load_checkpoint(path, *four), doctest::Contains("stage1.0.weight_quant.codebook"), std::runtime_error);
  fs::remove(path);
}

TEST_CASE("cluster: bits outside 1..8, per-channel codebooks and bad metadata give clear errors") {
  using train::parse_options;
  for (const char* b : {"0", "9"})
    CHECK_THROWS_WITH_AS(parse_options({"cifar10", "--qat", "cluster", "--bits", b}),
                         (std::string("option --bits: ") + b + " is outside 1..8 for --qat cluster").c_str(), std::runtime_error);
  CHECK(parse_options({"cifar10", "--qat", "cluster", "--bits", "1"}).act_bits == 1);
  CHECK_THROWS_WITH_AS(parse_options({"cifar10", "--qat", "cluster", "--granularity", "channel"}),
                       doctest::Contains("option --granularity: --qat cluster has one codebook per layer"), std::runtime_error);
  auto md = models::qat_metadata({models::QatMethod::cluster, 3, 3, false, false, layers::StepInit::min_error});
  md["bits"] = "12";
  CHECK_THROWS_WITH_AS(models::qat_from_metadata(md, "c.safetensors"), doctest::Contains("c.safetensors: metadata: 12 weight bits is outside 1..8"),
                       std::runtime_error);
  CHECK_THROWS_WITH_AS(ClusterQuantizer(9), doctest::Contains("cluster quantizer: bit width 9 is outside 1..8"), std::runtime_error);
  ClusterQuantizer fresh(2);
  fresh.eval();
  CHECK_THROWS_WITH_AS(fresh.forward(Tensor::zeros({4})), doctest::Contains("before its codebook was set"), std::runtime_error);
}

static int run(const std::vector<std::string>& args) { return train::run_training(train::parse_options(args), args); }

TEST_CASE("./train --qat cluster resumes bit-exactly mid-epoch: the codebooks are state") {
  fs::path root = fresh_temp_dir("cluster_resume");
  fs::path data = make_cifar(root / "cifar", 16, 40);  // 80 training images: 2 batches of 32 an epoch
  fs::path fp = root / "fp", whole = root / "whole", split = root / "split";
  auto args = [&](const fs::path& out, std::vector<std::string> more) {
    std::vector<std::string> a = {"cifar10", "--data", data.string(), "--out", out.string(), "--batch-size", "32",
                                  "--threads", "2", "--tmax", "2", "--seed", "5"};
    a.insert(a.end(), more.begin(), more.end());
    return a;
  };
  REQUIRE(run(args(fp, {"--epochs", "1"})) == 0);
  const std::vector<std::string> qat = {"--qat", "cluster", "--bits", "3", "--init", (fp / "last.safetensors").string(),
                                        "--lr", "0.01", "--epochs", "2"};
  REQUIRE(run(args(whole, qat)) == 0);
  train::request_interrupt();  // after the first step
  CHECK(run(args(split, qat)) == 130);
  std::vector<std::string> resume = {"--resume", split.string()};
  REQUIRE(train::run_training(train::parse_options(resume), resume) == 0);

  st::File a = st::load((whole / "last.safetensors").string()), b = st::load((split / "last.safetensors").string());
  CHECK(a.metadata.at("qat") == "cluster");
  REQUIRE(a.tensors.count("stage1.0.weight_quant.codebook"));
  CHECK(a.tensors.at("stage1.0.weight_quant.codebook").shape == std::vector<int64_t>{8});
  CHECK(!a.tensors.count("stage0.weight_quant.codebook"));  // stage0 FP32 by default
  REQUIRE(a.tensors.size() == b.tensors.size());
  size_t differing = 0;
  for (auto& [name, e] : a.tensors) differing += b.tensors.at(name).bytes != e.bytes;
  CHECK(differing == 0);

  // ./ptq at the learned codebooks, its --export the compressed file, which ./ptq reads back to the same top-1
  const fs::path json = root / "ptq.json", packed = root / "w3.cluster.safetensors", json2 = root / "ptq2.json";
  const std::string last = (whole / "last.safetensors").string();
  REQUIRE(quant::run_ptq({"--ckpt", last, "--data", data.string(), "--json", json.string(), "--threads", "2",
                          "--export", packed.string()}) == 0);
  CHECK(st::load(packed.string()).tensors.count("stage1.0.rbr_reparam.weight_codes"));
  CHECK(fs::file_size(packed) < fs::file_size(whole / "last.safetensors") / 5);
  REQUIRE(quant::run_ptq({"--ckpt", packed.string(), "--data", data.string(), "--json", json2.string(), "--threads", "2",
                          "--arch", "repvgg-cifar", "--dataset", "cifar10"}) == 0);
  const nlohmann::json j = nlohmann::json::parse(std::ifstream(json)), j2 = nlohmann::json::parse(std::ifstream(json2));
  CHECK(j["qat"] == "cluster");
  CHECK(j["results"][0]["bits"] == 3);
  CHECK(j2["results"][0]["top1"] == j["results"][0]["top1"]);
  CHECK(quant::run_inspect({"--ckpt", last, "--data", data.string(), "--threads", "2"}) == 0);
  fs::remove_all(root);
}

TEST_CASE("packed codes: b-bit codes round-trip for b = 1..8, ceil(n b / 8) bytes, least significant bit first") {
  Rng rng(6);
  for (int bits = 1; bits <= 8; bits++) {
    const std::vector<float> r = rand_uniform(Shape{1001}, 0, 1, rng).to_vector();
    std::vector<uint8_t> codes(r.size());
    for (size_t i = 0; i < r.size(); i++) codes[i] = (uint8_t)std::min<int>((int)(r[i] * (1 << bits)), (1 << bits) - 1);
    const std::vector<uint8_t> packed = deploy::pack_codes(codes, bits);
    CHECK(packed.size() == (1001 * bits + 7) / 8);
    CHECK(deploy::unpack_codes(packed, bits, codes.size()) == codes);
  }
  CHECK(deploy::pack_codes({1, 0, 3, 2}, 2) == std::vector<uint8_t>{0b10110001});
  CHECK_THROWS_WITH_AS(deploy::pack_codes({4}, 2), doctest::Contains("more than 2 bits"), std::runtime_error);
}

TEST_CASE("a compressed ClusterQAT file holds codes and codebooks; loading it gives the QAT model's eval logits; bad codebooks are refused") {
  auto m = cluster_model(models::BlockType::repvgg, 3.0f, 3, true, 7);
  Rng rng(8);
  Tensor x = rand_uniform({4, 3, 32, 32}, -1, 1, rng);
  cross_entropy(m->forward(x), Tensor::zeros({4}, DType::i32)).backward();  // training: codebooks and steps set
  m->eval();
  std::vector<float> eval_logits;
  {
    NoGradGuard no_grad;
    eval_logits = m->forward(x).to_vector();
  }
  m->switch_to_deploy();
  const st::File f = quant::compress_cluster(*m, {{"arch", "repvgg-cifar"}});
  CHECK(deploy::is_compressed(f));
  CHECK(!f.tensors.count("stage1.0.rbr_reparam.weight"));
  const st::Entry& codes = f.tensors.at("stage1.0.rbr_reparam.weight_codes");
  CHECK(codes.bytes.size() == (16 * 16 * 9 * 3 + 7) / 8);
  CHECK(f.tensors.count("linear.weight_codes"));  // --quantize-first-last: the FC coded too
  CHECK(f.tensors.at("stage1.0.weight_quant.codebook").numel() == 8);

  const st::File plain = deploy::decompress_cluster(f, "c.safetensors");
  Rng r2(99);
  models::RepVGG loaded(m->arch, r2, 3.0f);
  loaded.set_qat(*models::qat_from_metadata(plain.metadata, "c.safetensors"));
  loaded.switch_to_deploy();
  layers::load_state_dict(loaded, plain, "", "c.safetensors");
  loaded.eval();
  NoGradGuard no_grad;
  CHECK(loaded.forward(x).to_vector() == eval_logits);

  st::File bad = f;
  bad.tensors["stage1.0.weight_quant.codebook"] = st::Entry::of<float>({16}, std::vector<float>(16, 0.0f).data());
  CHECK_THROWS_WITH_AS(deploy::decompress_cluster(bad, "c.safetensors"),
                       "c.safetensors: tensor 'stage1.0.weight_quant.codebook' has 16 entries, expected 2^3 = 8 (metadata bits)",
                       std::runtime_error);
  bad = f;
  bad.tensors["stage1.0.rbr_reparam.weight_codes"].bytes.pop_back();
  CHECK_THROWS_WITH_AS(deploy::decompress_cluster(bad, "c.safetensors"),
                       doctest::Contains("c.safetensors: tensor 'stage1.0.rbr_reparam.weight_codes': "), std::runtime_error);
}

TEST_CASE("model sizes in bytes: FP32, uniform and cluster B-bit, from the structure") {
  const models::ArchConfig a = models::cifar_config(models::BlockType::repvgg, 16);
  // stage0 3->16, 25 blocks 16->16, FC 16->10: 27 layers
  std::vector<int> widths(27, 4);
  const deploy::ModelBytes fl = deploy::model_bytes(a, widths);
  const int64_t weights = 432 + 25 * 2304 + 160, biases = 16 + 25 * 16 + 10;
  CHECK(fl.fp32 == 4 * (weights + biases));
  const int64_t codes = (432 * 4 + 7) / 8 + 25 * (2304 * 4 / 8) + 160 * 4 / 8;
  CHECK(fl.uniform == codes + 27 * (4 + 4) + 4 * biases);        // a weight step and an input step a layer
  CHECK(fl.cluster == codes + 27 * (16 * 4 + 4) + 4 * biases);   // a 16-entry codebook and an input step
  widths.front() = widths.back() = 0;  // stage0 and the FC in FP32
  const deploy::ModelBytes mid = deploy::model_bytes(a, widths);
  CHECK(mid.fp32 == fl.fp32);
  CHECK(mid.cluster == 25 * (2304 * 4 / 8 + 16 * 4 + 4 + 4 * 16) + 4 * (432 + 16 + 160 + 10));
}
