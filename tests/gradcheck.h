// Central-difference gradient check (as Caffe's test_gradient_check_util): for a scalar loss
// L = sum(f(inputs) * w) with a fixed random w, compares every analytic d L / d input[i] with
// (L(x + h) - L(x - h)) / 2h, computed in double from float forwards. Relative error is scaled by
// max(|numeric|, |analytic|, 1), and points within `kink` of a non-differentiable point can be skipped.
#pragma once
#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/random.h"
#include "tests/testing.h"

namespace testing_util {

using engine::Tensor;

struct GradCheck {
  double step = 1e-2;      // h: float32 forwards need a fairly large step
  double tolerance = 2e-2;
  // Optional: skip input element (input index, flat index) e.g. near a ReLU kink.
  std::function<bool(size_t, int64_t)> skip;
};

// f maps the inputs (all f32, requires_grad set by this function) to one output tensor.
inline void check_gradients(const std::function<Tensor(const std::vector<Tensor>&)>& f, std::vector<Tensor> inputs,
                            const GradCheck& opt = {}, uint64_t seed = 7) {
  for (auto& x : inputs) {
    x.requires_grad_(true);
    x.set_grad(Tensor());  // callers may reuse inputs across checks
  }
  Tensor out = f(inputs);
  engine::Rng rng(seed);
  Tensor w = engine::rand_uniform(out.shape(), -1.f, 1.f, rng);
  auto loss_of = [&](const std::vector<Tensor>& in) {
    engine::NoGradGuard g;
    Tensor o = f(in);
    const float* po = o.f32();
    const float* pw = w.f32();
    double acc = 0;
    for (int64_t i = 0; i < o.numel(); i++) acc += (double)po[i] * pw[i];
    return acc;
  };
  engine::sum_all(engine::mul(out, w)).backward();
  for (size_t k = 0; k < inputs.size(); k++) {
    Tensor& x = inputs[k];
    REQUIRE_MESSAGE(x.grad().defined(), "no gradient reached input " << k);
    std::vector<float> analytic = x.grad().to_vector();
    float* p = x.f32();
    for (int64_t i = 0; i < x.numel(); i++) {
      if (opt.skip && opt.skip(k, i)) continue;
      float orig = p[i];
      p[i] = orig + (float)opt.step;
      double up = loss_of(inputs);
      p[i] = orig - (float)opt.step;
      double down = loss_of(inputs);
      p[i] = orig;
      double numeric = (up - down) / (2 * opt.step);
      double scale = std::max({std::fabs(numeric), std::fabs((double)analytic[i]), 1.0});
      INFO("input " << k << " element " << i << ": analytic " << analytic[i] << " numeric " << numeric);
      CHECK(std::fabs(numeric - analytic[i]) / scale <= opt.tolerance);
    }
  }
}

// Max |a - b| / (atol + rtol |b|) <= 1 element-wise; reports the worst element.
inline void check_close(const std::vector<float>& a, const std::vector<double>& b, double rtol, double atol,
                        const std::string& what = "") {
  REQUIRE_MESSAGE(a.size() == b.size(), what << ": " << a.size() << " vs " << b.size() << " elements");
  double worst = 0;
  size_t at = 0;
  for (size_t i = 0; i < a.size(); i++) {
    double diff = std::fabs(a[i] - b[i]);
    double e = diff == 0 ? 0 : diff / (atol + rtol * std::fabs(b[i]));
    if (!(e <= worst)) { worst = e; at = i; }
  }
  INFO(what << ": worst element " << at << ": " << (a.empty() ? 0 : a[at]) << " vs " << (b.empty() ? 0 : b[at]));
  CHECK(worst <= 1.0);
}

inline void check_close(const std::vector<float>& a, const std::vector<float>& b, double rtol, double atol,
                        const std::string& what = "") {
  check_close(a, std::vector<double>(b.begin(), b.end()), rtol, atol, what);
}

}  // namespace testing_util
