// Counter-based random numbers for the input pipelines: splitmix64 (Steele, Lea, Flood 2014).
// Every image draws its augmentation from its own Rng seeded by image_seed(seed, epoch, index), so the
// batches of a seed do not depend on the number of threads or on which thread made them.
#pragma once
#include <cstdint>

namespace data {

struct Rng {
  uint64_t state;
  explicit Rng(uint64_t seed) : state(seed) {}

  uint64_t next() {
    uint64_t z = (state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  double uniform() { return double(next() >> 11) * 0x1.0p-53; }                // [0, 1)
  double uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }  // [lo, hi)
  // [0, n), by the multiply-shift map (bias below n / 2^64).
  uint64_t below(uint64_t n) { return uint64_t((unsigned __int128)next() * n >> 64); }
};

inline uint64_t mix_seed(uint64_t a, uint64_t b) { return Rng(a ^ Rng(b).next()).next(); }

// The seed of image `index` (its index in the dataset) in `epoch`.
inline uint64_t image_seed(uint64_t seed, int epoch, uint64_t index) {
  return mix_seed(mix_seed(seed, uint64_t(epoch)), index);
}

}  // namespace data
