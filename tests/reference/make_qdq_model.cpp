// Writes tests/reference/qdq_cifar_w8.safetensors, the trained model of the QDQ export tests
// (tests/test_qdq_export.cpp): a width-8 CIFAR RepVGG (models::cifar_config, training form) trained in full
// precision by the engine for 2 epochs of all 50,000 CIFAR-10 training images (batch 128, SGD momentum
// 0.9, weight decay 1e-4, lr 0.1 on a per-step cosine, the standard augmentation, seed 1), ~3 minutes
// on 2 cores. `make qdq-reference` builds and runs it; the file's metadata records the recipe and the
// model's top-1 on the 10,000 test images.
#include <fmt/format.h>

#include <chrono>
#include <cmath>
#include <cstdio>

#include "datasets/cifar10.h"
#include "datasets/loader.h"
#include "layers/checkpoint.h"
#include "models/repvgg.h"
#include "trainer/step.h"

int main() {
  const std::string out = "tests/reference/qdq_cifar_w8.safetensors";
  const int width = 8, epochs = 2, batch = 128, threads = 2;
  const float lr = 0.1f;
  const std::string dir = data::find_or_fetch_cifar10("", /*fetch=*/false);
  auto train_set = data::open_cifar10(dir, /*train=*/true, 0);
  auto test_set = data::open_cifar10(dir, /*train=*/false, 0);
  engine::Rng rng(1);
  models::RepVGG model(models::cifar_config(models::BlockType::repvgg, width), rng);
  train::Optimizer opt = train::make_optimizer(model, lr, 0.9f, false, 1e-4f, false);
  data::Loader loader(*train_set, batch, /*train=*/true, /*seed=*/1, threads);
  const int steps = epochs * (int)(train_set->size() / batch);
  const auto t0 = std::chrono::steady_clock::now();
  engine::Tensor x, y;
  int step = 0;
  model.train();
  for (int e = 0; e < epochs; e++) {
    loader.start_epoch(e);
    while (const data::Batch* b = loader.next()) {
      opt.sgd.set_lr(0.5f * lr * (1.0f + (float)std::cos(M_PI * step++ / steps)));
      data::to_tensors(*b, engine::Device::cpu, x, y);
      train::train_step(model, opt.sgd, x, y, 0.0f, 0.0f);
    }
    std::printf("epoch %d/%d done (%.0f s)\n", e + 1, epochs, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  data::Loader test_loader(*test_set, 500, /*train=*/false, 0, threads);
  const train::EvalResult r = train::evaluate(model, test_loader, engine::Device::cpu);
  layers::save_checkpoint(out, model,
                          {{"model", fmt::format("models::cifar_config(repvgg, width {})", width)}, {"dataset", "cifar10"},
                           {"recipe", fmt::format("{} epochs of 50000, batch {}, lr {} per-step cosine, momentum 0.9, wd 1e-4, seed 1", epochs, batch, lr)},
                           {"test_top1", fmt::format("{:.2f}", r.top1)}});
  std::printf("wrote %s: top-1 %.2f%% on the %zu test images\n", out.c_str(), r.top1, r.images);
  return 0;
}
