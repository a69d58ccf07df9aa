#include "engine/random.h"

namespace engine {

Tensor rand_uniform(const Shape& shape, float lo, float hi, Rng& rng) {
  Tensor t = Tensor::empty(shape);
  float* p = t.f32();
  for (int64_t i = 0; i < t.numel(); i++) p[i] = rng.uniform(lo, hi);
  return t;
}

Tensor rand_normal(const Shape& shape, float mean, float stddev, Rng& rng) {
  Tensor t = Tensor::empty(shape);
  float* p = t.f32();
  for (int64_t i = 0; i < t.numel(); i++) p[i] = mean + stddev * (float)rng.normal();
  return t;
}

}  // namespace engine
