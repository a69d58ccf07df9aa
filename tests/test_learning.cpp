// Whole training steps: the engine learns real data, a steady-state step allocates nothing and creates
// no oneDNN primitive, and the same seed gives the same weights.
#include <cstring>

#include "datasets/cifar10.h"
#include "datasets/loader.h"
#include "engine/allocator.h"
#include "engine/cpu/dnnl.h"
#include "engine/ops.h"
#include "engine/optim.h"
#include "engine/schedule.h"
#include "models/repvgg.h"
#include "tests/testing.h"

using namespace engine;

// A small RepVGG (the CIFAR layout at width 16) and its SGD.
struct Small {
  Rng rng;
  models::RepVGG model;
  SGD sgd;
  explicit Small(uint64_t seed, float oabn_k = 0, float lr = 0.05f)
      : rng(seed), model(models::cifar_config(models::BlockType::repvgg, 16), rng, oabn_k), sgd(groups(model), lr, 0.9f) {}
  static std::vector<ParamGroup> groups(const models::Model& m) {
    ParamGroup g;
    g.weight_decay = 1e-4f;
    for (auto& p : m.parameters()) g.params.push_back(p.tensor);
    return {g};
  }
  // One SGD step; returns the number of correct predictions.
  int64_t step(const Tensor& x, const Tensor& y) {
    Tensor logits = model(x);
    Tensor loss = cross_entropy(logits, y);
    sgd.zero_grad();
    loss.backward();
    sgd.step();
    return topk_correct(logits, y, 1);
  }
};

static std::string cifar_dir() { return shared_data_dir().empty() ? "" : shared_data_dir() + "/cifar-10-batches-bin"; }

TEST_CASE("learning: a small RepVGG fits 512 real CIFAR-10 training images to over 95% training accuracy" *
          skip_unless(have_path(cifar_dir() + "/data_batch_1.bin") && !kSanitized,
                      kSanitized ? "learning test: up to 40 epochs, too slow under the sanitizers"
                                 : "learning test: no CIFAR-10 in ../shared/data")) {
  auto ds = data::open_cifar10(cifar_dir(), true, 512);
  data::Loader loader(*ds, 64, /*train=*/false, 0, 2);  // no augmentation: fitting, not generalizing
  Small net(1);
  Schedule cosine{.kind = ScheduleKind::cosine, .base_lr = 0.1f, .t_max = 40};
  double accuracy = 0;
  Tensor x, y;
  for (int epoch = 0; epoch < 40 && accuracy <= 0.95; epoch++) {
    net.sgd.set_lr(cosine.lr_at(epoch));
    loader.start_epoch(epoch);
    int64_t correct = 0, seen = 0;
    while (const data::Batch* b = loader.next()) {
      data::to_tensors(*b, Device::cpu, x, y);
      correct += net.step(x, y);
      seen += b->n;
    }
    accuracy = (double)correct / seen;
    MESSAGE("epoch " << epoch + 1 << ": training accuracy " << accuracy);
  }
  CHECK(accuracy > 0.95);
}

TEST_CASE("learning: a steady-state training step allocates nothing and creates no oneDNN primitive") {
  Rng rng(3);
  Tensor x = Tensor::empty({16, 3, 32, 32});
  for (int64_t i = 0; i < x.numel(); i++) x.f32()[i] = rng.uniform(-1, 1);
  Tensor y = Tensor::empty({16}, DType::i32);
  for (int i = 0; i < 16; i++) y.data<int32_t>()[i] = i % 10;
  Small net(2, /*oabn_k=*/3);
  for (int i = 0; i < 2; i++) net.step(x, y);  // warm-up: buffers and primitives are made here
  AllocStats before = alloc_stats();
  uint64_t primitives = cpu::dnnl_primitives_created();
  for (int i = 0; i < 3; i++) net.step(x, y);
  CHECK(alloc_stats().system_allocs == before.system_allocs);
  CHECK(cpu::dnnl_primitives_created() == primitives);
}

TEST_CASE("learning: the same seed gives bit-identical weights") {
  Rng rng(4);
  Tensor x = Tensor::empty({8, 3, 32, 32});
  for (int64_t i = 0; i < x.numel(); i++) x.f32()[i] = rng.uniform(-1, 1);
  Tensor y = Tensor::empty({8}, DType::i32);
  for (int i = 0; i < 8; i++) y.data<int32_t>()[i] = (i * 3) % 10;
  auto weights_after_steps = [&] {
    Small net(9, 3);
    for (int i = 0; i < 3; i++) net.step(x, y);
    std::vector<float> all;
    for (auto& p : net.model.parameters()) {
      auto v = p.tensor.to_vector();
      all.insert(all.end(), v.begin(), v.end());
    }
    return all;
  };
  std::vector<float> a = weights_after_steps(), b = weights_after_steps();
  REQUIRE(a.size() == b.size());
  CHECK(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}
