// Experiment behind engine/cpu/winograd.cpp's choices: times our Winograd F(2x2, 3x3) and F(4x4, 3x3) and
// oneDNN's direct kernel (forward, backward-data, weight gradient) on the 3x3 stride-1 shapes of the CIFAR
// nets (batch 128) and of ResNet-18 and RepVGG-A0 (batch 32 and 1, forward), in nChw8c, medians of 5 calls in
// ms. The forward-only (inference) cases run with frozen weights (engine/cpu/frozen.h), as a deployed model:
// ours transforms them once, oneDNN reorders them once.
// Run it where oneDNN has no Winograd, or capped as on an AVX2 CPU:
//   make dev && ONEDNN_MAX_CPU_ISA=AVX2 OMP_NUM_THREADS=2 OMP_WAIT_POLICY=passive build/dev/winograd
#include <cstdlib>
#include <cstdio>
#include <random>
#include <vector>

#include "dev/timing.h"
#include "engine/cpu/winograd.h"
#include "engine/kernels.h"

using namespace engine;
using cpu::WinogradTile;

int main() {
  setenv("REPQ_WINOGRAD", "0", 1);  // so that cpu::conv2d_* run oneDNN's direct kernel, not ours
  struct Case {
    int64_t n, c, hw;
    bool training;
  };
  std::printf("shape                 op       F(2x2)  F(4x4)  direct  (ms)\n");
  for (Case k : {Case{128, 64, 16, true}, Case{128, 64, 8, true}, Case{128, 64, 4, true}, Case{32, 48, 56, false},
                 Case{32, 96, 28, false}, Case{32, 192, 14, false}, Case{32, 64, 56, false}, Case{32, 128, 28, false},
                 Case{32, 256, 14, false}, Case{32, 512, 7, false}, Case{1, 48, 56, false}, Case{1, 96, 28, false},
                 Case{1, 192, 14, false}, Case{1, 64, 56, false}, Case{1, 128, 28, false}, Case{1, 256, 14, false}}) {
    ConvShape s{k.n, k.c, k.hw, k.hw, k.c, 3, 3, k.hw, k.hw, 1, 1, 1, 1, false, 8, 8};
    std::vector<float> x(k.n * k.c * k.hw * k.hw), w(k.c * k.c * 9), y(x.size()), gx(x.size()), gw(w.size());
    std::mt19937 rng(1);
    std::normal_distribution<float> normal;
    for (float& v : x) v = normal(rng);
    for (float& v : w) v = 0.05f * normal(rng);
    for (float& v : y) v = normal(rng);
    Tensor frozen_w = Tensor::from_vector(w, {k.c, k.c, 3, 3});
    Storage* frozen = k.training ? nullptr : frozen_w.freeze_().impl()->storage.get();
    for (int op = 0; op < (k.training ? 3 : 1); op++) {
      auto run = [&](int algorithm) {  // 0: F(2x2), 1: F(4x4), 2: oneDNN direct
        const WinogradTile tile = algorithm ? WinogradTile::f4 : WinogradTile::f2;
        return 1e3 * time_median([&] {
          const float* wf = frozen ? frozen_w.f32() : w.data();
          if (op == 0) algorithm == 2 ? cpu::conv2d_forward(s, x.data(), wf, nullptr, y.data(), frozen)
                                      : cpu::winograd_forward(s, x.data(), wf, nullptr, y.data(), tile, frozen);
          if (op == 1) algorithm == 2 ? cpu::conv2d_backward_data(s, y.data(), w.data(), gx.data())
                                      : cpu::winograd_backward_data(s, y.data(), w.data(), gx.data(), tile);
          if (op == 2) algorithm == 2 ? cpu::conv2d_backward_weight(s, x.data(), y.data(), gw.data(), nullptr)
                                      : cpu::winograd_backward_weight(s, x.data(), y.data(), gw.data(), nullptr, tile);
        });
      };
      const double f2 = run(0), f4 = run(1), direct = run(2);
      std::printf("n%-4ld c%-4ld %3ldx%-3ld  %-8s %7.2f %7.2f %7.2f\n", (long)k.n, (long)k.c, (long)k.hw, (long)k.hw,
                  op == 0 ? "forward" : op == 1 ? "bwd-data" : "bwd-wt", f2, f4, direct);
    }
  }
}
