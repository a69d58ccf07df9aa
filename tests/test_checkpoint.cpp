// Checkpoints: training and deploy form round trips, metadata, extra tensors, num_batches_tracked, and
// an error naming the file and the first mismatching tensor for each kind of mismatch.
#include <unistd.h>

#include <filesystem>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "layers/checkpoint.h"
#include "models/repvgg.h"
#include "tests/testing.h"

using namespace engine;
using namespace layers;
using namespace models;
namespace fs = std::filesystem;

namespace {

struct TempFile {
  std::string path;
  explicit TempFile(const std::string& name)
      : path((fs::temp_directory_path() / ("ckpt_" + std::to_string(::getpid()) + "_" + name)).string()) {}
  ~TempFile() { fs::remove(path); }
};

// A small repvgg-cifar (width 8) trained one step's worth of forward, so its running stats are not the init.
std::unique_ptr<RepVGG> small_model(uint64_t seed, BlockType block = BlockType::repvgg, int width = 8) {
  Rng rng(seed);
  auto m = std::make_unique<RepVGG>(cifar_config(block, width), rng);
  m->forward(rand_normal({2, 3, 16, 16}, 0.0f, 1.0f, rng));
  return m;
}

void check_same_state(const Module& a, const Module& b) {
  auto sa = a.state_dict(), sb = b.state_dict();
  REQUIRE(sa.size() == sb.size());
  for (size_t i = 0; i < sa.size(); i++) {
    CHECK(sa[i].name == sb[i].name);
    CHECK_MESSAGE(sa[i].tensor.to_vector() == sb[i].tensor.to_vector(), sa[i].name);
  }
}

}  // namespace

TEST_CASE("checkpoint: a training-form round trip restores every tensor, the metadata and the extras") {
  TempFile file("train.safetensors");
  auto saved = small_model(1);
  st::Entry rng_state = st::Entry::of<int64_t>({4}, std::vector<int64_t>{1, -2, 3, 4});
  st::Entry momentum = to_entry(Tensor::full({2, 3}, 0.5f));
  save_checkpoint(file.path, *saved, {{"arch", "repvgg-cifar"}, {"epoch", "3"}},
                  {{"rng", rng_state}, {"optim.linear.weight", momentum}});

  st::File raw = st::load(file.path);
  CHECK(raw.metadata.at("form") == "train");
  const st::Entry& nbt = st::require(raw, "stage1.0.rbr_dense.bn.num_batches_tracked", st::DType::I64, {}, file.path);
  CHECK(nbt.to_vector<int64_t>()[0] == 1);
  CHECK(raw.tensors.count("stage0.rbr_dense.conv.weight"));

  auto loaded = small_model(2);  // other weights, other statistics
  for (auto& [name, m] : loaded->modules())
    if (auto* bn = dynamic_cast<BatchNorm2d*>(m)) bn->num_batches_tracked = 7;
  Checkpoint c = load_checkpoint(file.path, *loaded);
  check_same_state(*saved, *loaded);
  CHECK(c.metadata.at("arch") == "repvgg-cifar");
  CHECK(c.metadata.at("epoch") == "3");
  REQUIRE(c.extra.size() == 2);
  CHECK(c.extra.at("rng").to_vector<int64_t>() == std::vector<int64_t>{1, -2, 3, 4});
  CHECK(from_entry(c.extra.at("optim.linear.weight")).to_vector() == std::vector<float>(6, 0.5f));
  for (auto& [name, m] : loaded->modules())
    if (auto* bn = dynamic_cast<BatchNorm2d*>(m)) CHECK_MESSAGE(bn->num_batches_tracked == 1, name);

  NoGradGuard no_grad;
  saved->eval();
  loaded->eval();
  Tensor x = Tensor::full({1, 3, 16, 16}, 0.3f);
  CHECK(saved->forward(x).to_vector() == loaded->forward(x).to_vector());
}

TEST_CASE("checkpoint: a deploy-form file loads into a training-form model and switches it to deploy") {
  TempFile file("deploy.safetensors");
  for (BlockType type : {BlockType::repvgg, BlockType::qarepvgg}) {
    auto saved = small_model(3, type);
    saved->eval();
    saved->switch_to_deploy();
    save_checkpoint(file.path, *saved, {{"arch", "x"}});
    st::File raw = st::load(file.path);
    CHECK(raw.metadata.at("form") == "deploy");
    CHECK(raw.tensors.count("stage1.0.rbr_reparam.weight"));
    CHECK(raw.tensors.count("stage1.0.rbr_reparam.bias"));

    auto loaded = small_model(4, type);
    load_checkpoint(file.path, *loaded);
    for (auto& b : loaded->blocks()) CHECK(b->deployed());
    check_same_state(*saved, *loaded);
    NoGradGuard no_grad;
    loaded->eval();
    Tensor x = Tensor::full({1, 3, 16, 16}, -0.2f);
    CHECK(saved->forward(x).to_vector() == loaded->forward(x).to_vector());
  }
}

TEST_CASE("checkpoint: each mismatch names the file and the first tensor at fault") {
  TempFile file("bad.safetensors");
  auto model = small_model(5);
  save_checkpoint(file.path, *model);

  SUBCASE("another width: a shape mismatch") {
    auto wide = small_model(6, BlockType::repvgg, 16);
    CHECK_THROWS_WITH_AS(load_checkpoint(file.path, *wide),
                         doctest::Contains(("file " + file.path + ": tensor 'stage0.rbr_dense.conv.weight' has shape "
                                            "[8, 3, 3, 3], expected [16, 3, 3, 3]").c_str()),
                         std::runtime_error);
  }
  SUBCASE("a frozen model: refused before any tensor is written") {
    auto frozen = small_model(6);
    frozen->freeze();
    const std::vector<float> before = frozen->state_dict().front().tensor.to_vector();
    CHECK_THROWS_WITH_AS(load_checkpoint(file.path, *frozen),
                         doctest::Contains(("file " + file.path + ": tensor 'stage0.rbr_dense.conv.weight' of the model is "
                                            "frozen").c_str()),
                         std::runtime_error);
    CHECK(frozen->state_dict().front().tensor.to_vector() == before);
  }
  SUBCASE("another block type: a missing tensor") {
    auto qa = small_model(6, BlockType::qarepvgg);
    CHECK_THROWS_WITH_AS(load_checkpoint(file.path, *qa), doctest::Contains("'stage0.rbr_1x1.weight' is missing"),
                         std::runtime_error);
  }
  SUBCASE("a tensor the model lacks") {
    st::File f = st::load(file.path);
    f.tensors["stage4.1.rbr_dense.conv.weight"] = to_entry(Tensor::zeros({8, 8, 3, 3}));
    st::save(file.path, f);
    CHECK_THROWS_WITH_AS(load_checkpoint(file.path, *model),
                         doctest::Contains(("file " + file.path + ": tensor 'stage4.1.rbr_dense.conv.weight' is not in the model").c_str()),
                         std::runtime_error);
  }
  SUBCASE("a tensor the model lacks, of a long name: quoted cut at 80 characters") {
    st::File f = st::load(file.path);
    f.tensors["stage4." + std::string(100000, 'x')] = to_entry(Tensor::zeros({1}));
    st::save(file.path, f);
    CHECK_THROWS_WITH_AS(load_checkpoint(file.path, *model),
                         doctest::Contains(("tensor 'stage4." + std::string(70, 'x') + "...' is not in the model").c_str()),
                         std::runtime_error);
  }
  SUBCASE("a wrong dtype") {
    st::File f = st::load(file.path);
    f.tensors["linear.bias"] = st::Entry::of<double>({10}, std::vector<double>(10, 0.0));
    st::save(file.path, f);
    CHECK_THROWS_WITH_AS(load_checkpoint(file.path, *model), doctest::Contains("'linear.bias' has dtype F64"),
                         std::runtime_error);
  }
  SUBCASE("a training-form file into a deploy-form model") {
    model->switch_to_deploy();
    CHECK_THROWS_WITH_AS(load_checkpoint(file.path, *model), doctest::Contains("'stage0.rbr_reparam.weight' is missing"),
                         std::runtime_error);
  }
  SUBCASE("an extra tensor named like the model's is refused at save") {
    CHECK_THROWS_WITH_AS(save_checkpoint(file.path, *model, {}, {{"stage1.x", to_entry(Tensor::zeros({1}))}}),
                         doctest::Contains("named like the model's"), std::runtime_error);
  }
}

TEST_CASE("checkpoint: a NaN or inf value, or a running_var <= 0, is refused naming the file and tensor") {
  TempFile file("nonfinite.safetensors");
  auto model = small_model(7);
  save_checkpoint(file.path, *model);
  const st::File good = st::load(file.path);
  struct Case { const char* tensor; float value; const char* message; };
  const Case cases[] = {
      {"linear.weight", std::nanf(""), "tensor 'linear.weight' has nan at index 3; expected finite values"},
      {"stage0.rbr_dense.bn.weight", -INFINITY, "tensor 'stage0.rbr_dense.bn.weight' has -inf at index 3"},
      {"stage0.rbr_dense.bn.running_mean", INFINITY, "tensor 'stage0.rbr_dense.bn.running_mean' has inf at index 3"},
      {"stage0.rbr_dense.bn.running_var", 0.f, "tensor 'stage0.rbr_dense.bn.running_var' has 0 at index 3; expected positive"},
      {"stage0.rbr_dense.bn.running_var", -1.f, "tensor 'stage0.rbr_dense.bn.running_var' has -1 at index 3"},
  };
  for (const Case& c : cases) {
    INFO(c.tensor, " = ", c.value);
    st::File f = good;
    std::vector<float> v = f.tensors.at(c.tensor).to_vector<float>();
    v[3] = c.value;
    f.tensors[c.tensor] = st::Entry::of<float>(f.tensors.at(c.tensor).shape, v);
    st::save(file.path, f);
    CHECK_THROWS_WITH_AS(load_checkpoint(file.path, *model), doctest::Contains(("file " + file.path + ": " + c.message).c_str()),
                         std::runtime_error);
  }
}

TEST_CASE("checkpoint: metadata_int and metadata_double read a value in range or name file, key, value, range") {
  const Metadata md = {{"epoch", "3"}, {"neg", "-1"}, {"big", "99999999999999999999"}, {"word", "three"},
                       {"x", "0.25"}, {"nan", "nan"}, {"inf", "inf"}, {"trail", "2x"}, {"long", std::string(200, '7')}};
  CHECK(st::metadata_int(md, "ck", "epoch", 0, 10) == 3);
  CHECK(st::metadata_double(md, "ck", "x", 0, 1) == 0.25);
  CHECK(st::metadata_double(md, "ck", "epoch", 0, HUGE_VAL) == 3);
  CHECK_THROWS_WITH_AS(st::metadata_int(md, "ck", "neg", 0, 10), "file ck: metadata \"neg\" is '-1', expected an integer in [0, 10]",
                       std::runtime_error);
  CHECK_THROWS_WITH_AS(st::metadata_int(md, "ck", "epoch", 0, 2), "file ck: metadata \"epoch\" is '3', expected an integer in [0, 2]",
                       std::runtime_error);
  for (const char* key : {"big", "word", "x", "trail"})
    CHECK_THROWS_WITH_AS(st::metadata_int(md, "ck", key, 0, 10), doctest::Contains("expected an integer in [0, 10]"), std::runtime_error);
  CHECK_THROWS_WITH_AS(st::metadata_int(md, "ck", "missing", 0, 10),
                       "file ck: metadata \"missing\" is missing (expected an integer in [0, 10])", std::runtime_error);
  CHECK_THROWS_WITH_AS(st::metadata_double(md, "ck", "nan", 0, HUGE_VAL),
                       "file ck: metadata \"nan\" is 'nan', expected a finite number in [0, inf]", std::runtime_error);
  CHECK_THROWS_WITH_AS(st::metadata_double(md, "ck", "inf", -1, HUGE_VAL), doctest::Contains("is 'inf', expected a finite"),
                       std::runtime_error);
  CHECK_THROWS_WITH_AS(st::metadata_double(md, "ck", "neg", 0, 100), doctest::Contains("is '-1', expected a finite number in [0, 100]"),
                       std::runtime_error);
  CHECK_THROWS_WITH_AS(st::metadata_int(md, "ck", "long", 0, 10), doctest::Contains(("'" + std::string(77, '7') + "...'").c_str()),
                       std::runtime_error);
}
