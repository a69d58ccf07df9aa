// A seeded random generator (xoshiro256**, seeded through splitmix64): the same seed gives the same
// numbers on every machine, and its state is four integers that checkpoints save for resuming.
#pragma once
#include <cmath>
#include <cstdint>

#include "engine/tensor.h"

namespace engine {

inline uint64_t splitmix64(uint64_t& x) {
  uint64_t z = (x += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

struct Rng {
  uint64_t s[4];
  explicit Rng(uint64_t seed = 0) {
    for (auto& v : s) v = splitmix64(seed);
  }
  uint64_t next() {
    const uint64_t result = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
  }
  double uniform() { return (next() >> 11) * 0x1.0p-53; }  // [0, 1)
  float uniform(float lo, float hi) { return lo + (hi - lo) * (float)uniform(); }
  uint64_t below(uint64_t n) { return (uint64_t)(uniform() * (double)n); }  // [0, n)
  double normal() {  // Box-Muller
    double u1 = uniform(), u2 = uniform();
    return std::sqrt(-2.0 * std::log(1.0 - u1)) * std::cos(6.283185307179586 * u2);
  }

 private:
  static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
};

Tensor rand_uniform(const Shape& shape, float lo, float hi, Rng& rng);
Tensor rand_normal(const Shape& shape, float mean, float stddev, Rng& rng);

}  // namespace engine
