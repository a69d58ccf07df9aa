#include "layers/cluster_quantizer.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>

#include "engine/ops.h"

namespace layers {

using namespace engine;

static int check_cluster_bits(int bits) {
  ENGINE_CHECK(bits >= 1 && bits <= 8, "cluster quantizer: bit width " + std::to_string(bits) + " is outside 1..8");
  return bits;
}

ClusterQuantizer::ClusterQuantizer(int bits) : bits(check_cluster_bits(bits)) {
  codebook = register_buffer("codebook", Tensor::zeros(Shape{int64_t(1) << bits}));
  init_state = register_buffer("init_state", Tensor::zeros(Shape{1}));
}

bool ClusterQuantizer::initialized() const { return init_state.to_vector()[0] != 0.0f; }

// Algorithm 2 line 2
std::vector<float> reset_codebook(const std::vector<float>& w, int bits) {
  ENGINE_CHECK(!w.empty(), "reset_codebook of no weights");
  const auto [lo, hi] = std::minmax_element(w.begin(), w.end());
  const size_t n = size_t(1) << bits;
  std::vector<float> c(n);
  for (size_t k = 0; k < n; k++) c[k] = (float)(*lo + ((double)*hi - *lo) * (double)k / (double)(n - 1));
  c[n - 1] = *hi;  // exact ends
  return c;
}

// Algorithm 2 line 5. The nearest entry of w is one of the two around it in sorted order (|w − c| in float
// is monotone in c on either side of w), and the entries at the least distance are contiguous there: the
// first of them in (value, index) order is the tie rule's choice.
std::vector<uint8_t> assign_nearest(const std::vector<float>& w, const std::vector<float>& codebook) {
  const size_t n = codebook.size();
  ENGINE_CHECK(n >= 1 && n <= 256, "assign_nearest: a codebook of " + std::to_string(n) + " entries, expected 1..256");
  std::vector<int> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return codebook[a] < codebook[b]; });
  std::vector<float> sorted(n);
  for (size_t k = 0; k < n; k++) sorted[k] = codebook[order[k]];
  std::vector<uint8_t> codes(w.size());
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < w.size(); i++) {
    const float x = w[i];
    auto d = [&](size_t k) { return std::fabs(x - sorted[k]); };
    size_t hi = std::upper_bound(sorted.begin(), sorted.end(), x) - sorted.begin();  // first entry above x
    size_t best = hi == n ? n - 1 : hi == 0 ? 0 : d(hi - 1) <= d(hi) ? hi - 1 : hi;
    while (best > 0 && d(best - 1) == d(best)) best--;
    codes[i] = (uint8_t)order[best];
  }
  return codes;
}

// Algorithm 2 line 6 ("Map"), read as the k-means centroid step
void update_centroids(const std::vector<float>& w, const std::vector<uint8_t>& codes, std::vector<float>& codebook) {
  ENGINE_CHECK(w.size() == codes.size(), "update_centroids: " + std::to_string(codes.size()) + " codes for " +
                                             std::to_string(w.size()) + " weights");
  std::vector<double> sum(codebook.size(), 0.0);
  std::vector<int64_t> count(codebook.size(), 0);
  for (size_t i = 0; i < w.size(); i++) {
    ENGINE_CHECK(codes[i] < codebook.size(), "update_centroids: code " + std::to_string(codes[i]) + " of a codebook of " +
                                                 std::to_string(codebook.size()));
    sum[codes[i]] += w[i];
    count[codes[i]]++;
  }
  for (size_t k = 0; k < codebook.size(); k++)
    if (count[k] > 0) codebook[k] = (float)(sum[k] / (double)count[k]);
}

// Algorithm 2 line 8
std::vector<float> codebook_values(const std::vector<uint8_t>& codes, const std::vector<float>& codebook) {
  std::vector<float> v(codes.size());
  for (size_t i = 0; i < codes.size(); i++) v[i] = codebook.at(codes[i]);
  return v;
}

std::vector<int64_t> entry_counts(const std::vector<uint8_t>& codes, size_t entries) {
  std::vector<int64_t> c(entries, 0);
  for (uint8_t k : codes) c.at(k)++;
  return c;
}

std::vector<uint8_t> ClusterQuantizer::codes(const Tensor& w) const {
  ENGINE_CHECK(initialized(), "cluster quantizer used before its codebook was set (train a batch or load a checkpoint)");
  return assign_nearest(w.to_vector(), codebook.to_vector());
}

Tensor ClusterQuantizer::forward(const Tensor& w) {
  const std::vector<float> m = w.to_vector();
  std::vector<float> c;
  if (training() && (reset_requested_ || !initialized())) {
    c = reset_codebook(m, bits);  // line 2
    init_state.fill_(1.0f);
    reset_requested_ = false;
  } else {
    ENGINE_CHECK(initialized(), "cluster quantizer used in eval mode before its codebook was set (train a batch or load a checkpoint)");
    c = codebook.to_vector();
  }
  const std::vector<uint8_t> k = assign_nearest(m, c);  // line 5
  if (training()) {
    update_centroids(m, k, c);  // line 6
    codebook.copy_(Tensor::from_vector(c, codebook.shape()).to(codebook.device()));
  }
  const Tensor values = Tensor::from_vector(codebook_values(k, c), w.shape()).to(w.device());  // line 8
  return straight_through(w, values);                                                        // lines 9-10
}
}  // namespace layers
