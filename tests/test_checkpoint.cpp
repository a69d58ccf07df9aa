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
