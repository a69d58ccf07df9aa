#include "quant/calibration.h"

#include <algorithm>
#include <cmath>

#include "quant/ptq_grid.h"

namespace quant {

CalibMethod parse_calib(const std::string& s) {
  if (s == "minmax") return CalibMethod::minmax;
  if (s == "percentile") return CalibMethod::percentile;
  if (s == "mse") return CalibMethod::mse;
  engine::fail("calibration '" + s + "' is not one of minmax, percentile, mse");
}

const char* calib_name(CalibMethod m) {
  switch (m) {
    case CalibMethod::minmax: return "minmax";
    case CalibMethod::percentile: return "percentile";
    case CalibMethod::mse: return "mse";
  }
  return "?";
}

ActObserver::ActObserver(size_t draws_per_batch, uint64_t seed) : draws_(draws_per_batch), rng_(seed) {}

void ActObserver::observe(const Tensor& x) {
  std::vector<float> v = x.to_vector();
  count += (int64_t)v.size();
  const auto finite_end = std::remove_if(v.begin(), v.end(), [](float e) { return !std::isfinite(e); });  // stable
  non_finite += v.end() - finite_end;
  v.erase(finite_end, v.end());
  if (v.empty()) return;
  auto [lo, hi] = std::minmax_element(v.begin(), v.end());
  min = ranged_ ? std::min(min, *lo) : *lo;
  max = ranged_ ? std::max(max, *hi) : *hi;
  ranged_ = true;
  for (size_t i = 0; i < draws_; i++) sample.push_back(v[rng_.below(v.size())]);
}

double percentile(std::vector<float> v, double p) {
  ENGINE_CHECK(!v.empty() && p >= 0 && p <= 100, "percentile " + std::to_string(p) + " of " + std::to_string(v.size()) + " values");
  std::sort(v.begin(), v.end());
  const double pos = p / 100.0 * (double)(v.size() - 1);
  const size_t i = (size_t)pos;
  if (i + 1 >= v.size()) return v.back();
  return v[i] + (pos - (double)i) * ((double)v[i + 1] - v[i]);
}

double quant_mse(const std::vector<float>& values, Range range, int bits) {
  const AffineQuant q = asymmetric_params(range.lo, range.hi, bits);
  double sum = 0;
  for (float x : values) {
    const double e = (double)x - fake_quant_asymmetric(x, q);
    sum += e * e;
  }
  return values.empty() ? 0 : sum / (double)values.size();
}

static void check_observed(const ActObserver& obs) {
  ENGINE_CHECK(!obs.empty(), "no activations were observed (no calibration batch reached this layer)");
}

Range range_minmax(const ActObserver& obs) {
  check_observed(obs);
  return {obs.min, obs.max};
}

Range range_percentile(const ActObserver& obs, double low_pct, double high_pct) {
  check_observed(obs);
  return {(float)percentile(obs.sample, low_pct), (float)percentile(obs.sample, high_pct)};
}

Range range_mse(const ActObserver& obs, int bits, int grid) {
  check_observed(obs);
  auto candidate = [&](int k) { return Range{(float)k / (float)grid * obs.min, (float)k / (float)grid * obs.max}; };
  std::vector<double> mse(grid + 1);
#pragma omp parallel for schedule(dynamic)
  for (int k = 1; k <= grid; k++) mse[k] = quant_mse(obs.sample, candidate(k), bits);
  int best = grid;  // α = k / G; from large to small, so that a tie keeps the wider range
  for (int k = grid - 1; k >= 1; k--)
    if (mse[k] < mse[best]) best = k;
  return candidate(best);
}

Range calibrate(const ActObserver& obs, CalibMethod method, int bits) {
  switch (method) {
    case CalibMethod::minmax: return range_minmax(obs);
    case CalibMethod::percentile: return range_percentile(obs);
    case CalibMethod::mse: return range_mse(obs, bits);
  }
  return range_minmax(obs);
}

}  // namespace quant
