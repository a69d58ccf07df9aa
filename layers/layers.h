// The basic layers, with PyTorch's parameter names and default initialization (from a seeded Rng):
// Conv2d and Linear weights Kaiming-uniform with a = sqrt(5), i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
// biases U(-1/sqrt(fan_in), 1/sqrt(fan_in)); BatchNorm2d gamma 1, beta 0, running mean 0, var 1.
#pragma once
#include <cstdint>

#include "engine/random.h"
#include "layers/module.h"

namespace layers {

// x [N, C, H, W] -> [N, O, H', W'];  weight [O, C/groups, k, k], bias [O] (when made with one).
class Conv2d : public Module {
 public:
  Conv2d(int in, int out, int kernel, int stride, int padding, int groups, bool bias, engine::Rng& rng);
  Conv2d(Tensor weight, Tensor bias, int stride, int padding, int groups);  // given values (may lack bias)
  Tensor forward(const Tensor& x) override;

  Tensor weight, bias;
  const int stride, padding, groups;
};

// x [N, C, H, W] -> same; weight (gamma), bias (beta), running_mean, running_var [C].
// With oabn_k > 0 the forward uses gamma clipped as OABN does (layers/oabn.h); set it on identity BNs.
class BatchNorm2d : public Module {
 public:
  explicit BatchNorm2d(int channels);
  Tensor forward(const Tensor& x) override;
  // The gamma the forward uses: `weight`, or its OABN clip (straight-through to `weight`).
  Tensor gamma_used() const;
  // Counts a training-mode batch normalized with this BN's parameters, wherever it ran (its own forward,
  // the fused block tail, a BN folded into a merged kernel).
  void track_batch() {
    if (training()) num_batches_tracked++;
  }

  Tensor weight, bias, running_mean, running_var;
  int64_t num_batches_tracked = 0;  // as PyTorch's (an I64 scalar in state dicts); counted, not used
  float momentum = 0.1f, eps = 1e-5f;
  float oabn_k = 0;
};

// x [N, I] -> [N, O];  weight [O, I], bias [O].
class Linear : public Module {
 public:
  Linear(int in, int out, engine::Rng& rng);
  Tensor forward(const Tensor& x) override;

  Tensor weight, bias;
};

class ReLU : public Module {
 public:
  Tensor forward(const Tensor& x) override;
};

}  // namespace layers
