// Helpers for the tests against tests/reference/*.safetensors (see tests/reference/README.md):
// tensors from a reference file, and comparisons as the README measures errors; and the blocks' tests'
// randomized BNs.
#pragma once
#include <algorithm>
#include <cmath>
#include <string>

#include "engine/random.h"
#include "engine/safetensors.h"
#include "layers/checkpoint.h"
#include "layers/layers.h"
#include "tests/testing.h"

namespace testing_util {

// BN parameters and running statistics away from their defaults (so that a fold has something to fold), the
// same for equal seeds.
inline void randomize_bns(layers::Module& m, uint64_t seed) {
  engine::Rng rng(seed);
  for (auto& [name, mod] : m.modules())
    if (auto* bn = dynamic_cast<layers::BatchNorm2d*>(mod)) {
      const engine::Shape s = bn->weight.shape();
      bn->weight.copy_(engine::rand_uniform(s, 0.5f, 1.5f, rng));
      bn->bias.copy_(engine::rand_uniform(s, -0.3f, 0.3f, rng));
      bn->running_mean.copy_(engine::rand_uniform(s, -0.2f, 0.2f, rng));
      bn->running_var.copy_(engine::rand_uniform(s, 0.5f, 2.0f, rng));
    }
}

inline std::string reference_path(const std::string& name) { return "tests/reference/" + name; }

inline engine::Tensor ref_tensor(const st::File& f, const std::string& key) {
  auto it = f.tensors.find(key);
  REQUIRE_MESSAGE(it != f.tensors.end(), "reference tensor '" << key << "' is missing");
  return layers::from_entry(it->second);
}

// max|got - ref| / max|ref| <= rtol; where max|ref| < 1e-6 (a zero reference), max|got - ref| <= atol.
// An undefined `got` counts as zeros (a parameter no gradient reached).
inline void check_ref(const engine::Tensor& got, const st::File& f, const std::string& key, double rtol,
                      double atol = 1e-5) {
  engine::Tensor ref = ref_tensor(f, key);
  std::vector<float> r = ref.to_vector();
  std::vector<float> g = got.defined() ? got.to_vector() : std::vector<float>(r.size(), 0.0f);
  REQUIRE_MESSAGE(g.size() == r.size(), key << ": " << g.size() << " values, reference " << r.size());
  if (got.defined()) CHECK_MESSAGE(got.shape() == ref.shape(), key << ": shape " << got.shape().str() << " vs " << ref.shape().str());
  double max_ref = 0, max_diff = 0;
  for (size_t i = 0; i < r.size(); i++) {
    max_ref = std::max(max_ref, (double)std::fabs(r[i]));
    const double d = std::fabs((double)g[i] - r[i]);
    if (!(d <= max_diff)) max_diff = d;  // a NaN sticks
  }
  if (max_ref < 1e-6) {
    CHECK_MESSAGE(max_diff <= atol, key << ": zero reference, max abs error " << max_diff);
  } else {
    CHECK_MESSAGE(max_diff / max_ref <= rtol, key << ": relative error " << max_diff / max_ref << " > " << rtol);
  }
}

}  // namespace testing_util
