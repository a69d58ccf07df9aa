// Activation-range calibration for PTQ: an observer records what a quantized layer's input looks like on
// the calibration batches, and one of three rules turns that into the range [lo, hi] of its asymmetric
// quantizer (quant/ptq_grid.h):
//   minmax      lo = min x, hi = max x over every calibration activation (the default)
//   percentile  lo = P_0.01(x), hi = P_99.99(x)  (the outer 0.01% on each side clipped)
//   mse         the range α·[min, max], α ∈ {1/G, 2/G, ..., 1} (G = 100), that minimizes the quantization
//               error mean (x - x̂)² of the calibration activations at the layer's bit width
// minmax is exact; percentile and mse use a uniform random sample of the activations (a fixed number of
// draws per batch, so memory stays small whatever the image size).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "engine/random.h"
#include "engine/tensor.h"

namespace quant {

using engine::Tensor;

enum class CalibMethod { minmax, percentile, mse };
CalibMethod parse_calib(const std::string& s);  // "minmax" | "percentile" | "mse"; throws otherwise
const char* calib_name(CalibMethod m);

struct Range {
  float lo = 0, hi = 0;
};

class ActObserver {
 public:
  explicit ActObserver(size_t draws_per_batch = 16384, uint64_t seed = 0);
  void observe(const Tensor& x);  // any shape; copied to the host
  bool empty() const { return count == 0; }

  float min = 0, max = 0;       // exact, over the finite values observed
  int64_t count = 0;            // values observed
  int64_t non_finite = 0;       // of them, infinities and NaNs (an overflowing model)
  std::vector<float> sample;    // uniform random draws (with replacement)

 private:
  size_t draws_;
  engine::Rng rng_;
  bool ranged_ = false;  // min and max hold a finite value
};

// The p-th percentile (0..100) of v, linearly interpolated between order statistics (numpy's default).
double percentile(std::vector<float> v, double p);
// mean (x - x̂)² over `values` for the asymmetric quantizer of `range` at `bits`.
double quant_mse(const std::vector<float>& values, Range range, int bits);

Range range_minmax(const ActObserver& obs);
Range range_percentile(const ActObserver& obs, double low_pct = 0.01, double high_pct = 99.99);
Range range_mse(const ActObserver& obs, int bits, int grid = 100);
Range calibrate(const ActObserver& obs, CalibMethod method, int bits);

}  // namespace quant
