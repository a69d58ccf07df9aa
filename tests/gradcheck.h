// Central-difference gradient check. The output is contracted with fixed random weights w,
// L = Σ f(inputs) · w, so every output element matters with its own weight; each analytic d L / d input[i]
// is compared with (L(x + h) - L(x - h)) / 2h, computed in double from float forwards. The comparison is
// per input tensor, as one vector: the relative norm ‖analytic − numeric‖ / ‖numeric‖ must stay within
// `tolerance` (‖numeric‖ below `tiny` counts as 0, and then ‖analytic‖ must be below `tiny` too). Unlike
// Caffe's max(|g|, 1) scaling, this catches a backward that is off by a factor for small gradients: a
// mean's backward at half its value has relative error 0.5 (test_elementwise.cpp keeps such a case).
// Points within a non-differentiable kink can be skipped.
#pragma once
#include <algorithm>
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
  double tolerance = 2e-2; // on ‖analytic − numeric‖ / ‖numeric‖, per input tensor
  double tiny = 1e-6;      // a gradient norm below this is zero
  // Optional: skip input element (input index, flat index) e.g. near a ReLU kink.
  std::function<bool(size_t, int64_t)> skip;
};

using GradFn = std::function<Tensor(const std::vector<Tensor>&)>;

// Per input: ‖analytic − numeric‖ / ‖numeric‖ (0 when both are below opt.tiny; infinity when no
// gradient reached it, or only one of the two is below tiny).
inline std::vector<double> gradient_errors(const GradFn& f, std::vector<Tensor> inputs, const GradCheck& opt = {},
                                           uint64_t seed = 7) {
  for (auto& x : inputs) {
    x.requires_grad_(true);
    x.set_grad(Tensor());  // callers may reuse inputs across checks
  }
  Tensor out = f(inputs);
  engine::Rng rng(seed);
  Tensor w = engine::rand_uniform(out.shape(), -1.f, 1.f, rng);
  auto loss_of = [&](const std::vector<Tensor>& in) {
    engine::NoGradGuard g;
    const std::vector<float> po = f(in).to_vector();  // NCHW order in any layout, as w's
    const float* pw = w.f32();
    double acc = 0;
    for (size_t i = 0; i < po.size(); i++) acc += (double)po[i] * pw[i];
    return acc;
  };
  engine::sum_all(engine::mul(out, w)).backward();
  std::vector<double> errors;
  for (size_t k = 0; k < inputs.size(); k++) {
    Tensor& x = inputs[k];
    if (!x.grad().defined()) {
      errors.push_back(INFINITY);
      continue;
    }
    std::vector<float> analytic = x.grad().to_vector();
    float* p = x.f32();
    double diff2 = 0, num2 = 0, ana2 = 0;
    for (int64_t i = 0; i < x.numel(); i++) {
      if (opt.skip && opt.skip(k, i)) continue;
      float orig = p[i];
      p[i] = orig + (float)opt.step;
      double up = loss_of(inputs);
      p[i] = orig - (float)opt.step;
      double down = loss_of(inputs);
      p[i] = orig;
      double numeric = (up - down) / (2 * opt.step);
      diff2 += (numeric - analytic[i]) * (numeric - analytic[i]);
      num2 += numeric * numeric;
      ana2 += (double)analytic[i] * analytic[i];
    }
    const double num = std::sqrt(num2), ana = std::sqrt(ana2);
    if (num < opt.tiny) errors.push_back(ana < opt.tiny ? 0.0 : INFINITY);
    else errors.push_back(std::sqrt(diff2) / num);
  }
  return errors;
}

// f maps the inputs (all f32, requires_grad set by this function) to one output tensor.
inline void check_gradients(const GradFn& f, std::vector<Tensor> inputs, const GradCheck& opt = {}, uint64_t seed = 7) {
  const std::vector<double> errors = gradient_errors(f, inputs, opt, seed);
  for (size_t k = 0; k < errors.size(); k++) {
    INFO("input " << k << " (" << inputs[k].str() << "): relative gradient error " << errors[k]);
    CHECK(errors[k] <= opt.tolerance);
  }
}

// pad2d(x, pad_h, pad_w) whose backward crops gy at the wrong rows (offset pad_w, not pad_h: the columns'
// pad for the rows), for tests that the checker sees such a mistake, in the op (test_elementwise.cpp) and in
// the ACB merge built on it (test_acb.cpp).
inline Tensor pad2d_with_wrong_backward(const Tensor& x, int pad_h, int pad_w) {
  Tensor y = engine::pad2d(x.detach(), pad_h, pad_w);
  engine::record(y, "wrong_pad2d", {x}, [pad_w](const Tensor& out, const Tensor& g) {
    const Tensor& in = out.grad_fn()->inputs[0];
    const int64_t h = in.size(-2), w = in.size(-1), planes = in.numel() / (h * w);
    const int64_t gh = g.size(-2), gw = g.size(-1), rows = std::min<int64_t>(pad_w, gh - h);
    const std::vector<float> gv = g.to_vector();
    std::vector<float> gx(in.numel());
    for (int64_t p = 0; p < planes; p++)
      for (int64_t i = 0; i < h; i++)
        for (int64_t j = 0; j < w; j++) gx[(p * h + i) * w + j] = gv[(p * gh + i + rows) * gw + j + pad_w];
    engine::accumulate_grad(in, Tensor::from_vector(gx, in.shape()).to(in.device()));
  });
  return y;
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
