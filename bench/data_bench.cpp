// Input pipeline throughput, in images per second through a Loader, with 1 thread and with all threads:
//   data-cifar           CIFAR-10 training pipeline (crop, flip, normalize) on the 50,000 training images
//   data-imagenet        ImageNet training pipeline (stb decode, RandomResizedCrop 224, flip, normalize)
//                        on the 99 images of imagenet-sample, original sizes
//   data-imagenet-eval   ImageNet eval pipeline (decode, resize 256, center crop 224) on the same images
// Usage: data_bench [DATA]   (DATA: the shared data folder, default ../shared/data)
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>

#include "datasets/cifar10.h"
#include "datasets/image_folder.h"
#include "datasets/loader.h"

using namespace data;

// Runs epochs until `seconds` have passed; returns images per second.
static double throughput(const Dataset& ds, int batch_size, bool train, int threads, double seconds) {
  Loader loader(ds, batch_size, train, 1, threads);
  auto t0 = std::chrono::steady_clock::now();
  double elapsed = 0, sink = 0;
  size_t images = 0;
  for (int epoch = 0; elapsed < seconds; epoch++) {
    loader.start_epoch(epoch);
    while (const Batch* b = loader.next()) {
      images += b->n;
      sink += b->images[0];
    }
    elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  if (sink == 12345.678) std::printf("\n");  // keeps the batches from being optimized away
  return images / elapsed;
}

int main(int argc, char** argv) {
  std::string dir = argc > 1 ? argv[1] : "../shared/data";
  int all = int(std::max(1u, std::thread::hardware_concurrency()));
  try {
    auto cifar = open_cifar10(dir + "/cifar-10-batches-bin", true);
    for (int t : {1, all})
      std::printf("bench data-cifar ours=%.0f unit=img/s threads=%d\n", throughput(*cifar, 128, true, t, 2),
                  t);
  } catch (const std::exception& e) {
    std::printf("bench data-cifar SKIPPED (%s)\n", e.what());
  }
  try {
    auto imagenet = open_image_folder(dir + "/imagenet-sample/val");
    for (int t : {1, all})
      std::printf("bench data-imagenet ours=%.1f unit=img/s threads=%d\n",
                  throughput(*imagenet, 8, true, t, 4), t);
    for (int t : {1, all})
      std::printf("bench data-imagenet-eval ours=%.1f unit=img/s threads=%d\n",
                  throughput(*imagenet, 8, false, t, 4), t);
  } catch (const std::exception& e) {
    std::printf("bench data-imagenet SKIPPED (%s)\n", e.what());
  }
}
