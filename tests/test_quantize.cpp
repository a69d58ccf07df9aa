// fake_quantize (engine/quantize.cpp) against a double loop, and against LSQ as the paper writes it in
// composed ops (layers::lsq_reference: values and gradients of x and the step); NaN propagation; shape errors.
#include <cmath>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/random.h"
#include "layers/quantizer.h"
#include "tests/gradcheck.h"

using namespace engine;
using testing_util::check_close;

using layers::lsq_reference;

TEST_CASE("fake_quantize: forward against a double loop; values and gradients equal the composed ops'") {
  struct Case {
    Shape shape;
    int64_t steps;
    int z, q_min, q_max;
  };
  Rng rng(21);
  for (const Case& c : {Case{{2, 3, 5, 5}, 1, 0, 0, 15}, Case{{6, 4, 3, 3}, 6, 0, -7, 7}, Case{{3, 8}, 1, 3, 0, 255},
                        Case{{4, 2, 3, 3}, 4, 0, -8, 7}}) {
    INFO("shape " << c.shape.str() << ", " << c.steps << " steps, codes " << c.q_min << ".." << c.q_max);
    Tensor x = rand_uniform(c.shape, -2, 2, rng), step = rand_uniform({c.steps}, 0.05f, 0.3f, rng);
    Tensor w = rand_uniform(c.shape, -1, 1, rng);
    const float g = 0.37f;
    const std::vector<float> xv = x.to_vector(), sv = step.to_vector();
    std::vector<double> ref(xv.size());
    const int64_t per = x.numel() / c.steps;
    for (size_t i = 0; i < xv.size(); i++) {
      const double s = sv[i / per];
      const double q = std::clamp(std::nearbyint((double)(xv[i] / sv[i / per])) + c.z, (double)c.q_min, (double)c.q_max);
      ref[i] = (q - c.z) * s;
    }
    std::vector<std::vector<float>> grads[2], outs(2);
    for (int k = 0; k < 2; k++) {
      Tensor xk = x.clone().requires_grad_(true), sk = step.clone().requires_grad_(true);
      Tensor y = k == 0 ? fake_quantize(xk, sk, c.z, c.q_min, c.q_max, g) : lsq_reference(xk, sk, c.z, c.q_min, c.q_max, g);
      outs[k] = y.to_vector();
      sum_all(mul(y, w)).backward();
      grads[k] = {xk.grad().to_vector(), sk.grad().to_vector()};
    }
    check_close(outs[0], ref, 1e-6, 1e-7, "forward");
    check_close(outs[0], outs[1], 1e-6, 1e-7, "forward vs composed");
    check_close(grads[0][0], grads[1][0], 1e-6, 1e-7, "x gradient");
    check_close(grads[0][1], grads[1][1], 1e-4, 1e-6, "step gradient");
  }
}

TEST_CASE("fake_quantize: NaN stays NaN; a step of the wrong shape or a zero point outside the codes is refused") {
  Tensor x = Tensor::from_vector({1.0f, NAN, -3.0f}, {3});
  const auto y = fake_quantize(x, Tensor::full({1}, 0.5f), 0, -7, 7, 1.0f).to_vector();
  CHECK(y[0] == 1.0f);
  CHECK(std::isnan(y[1]));
  CHECK(y[2] == -3.0f);
  CHECK_THROWS_WITH_AS(fake_quantize(Tensor::zeros({4, 3}), Tensor::full({3}, 1.0f), 0, -7, 7, 1.0f),
                       doctest::Contains("expected [1] or [4]"), std::runtime_error);
  CHECK_THROWS_WITH_AS(fake_quantize(Tensor::zeros({4}), Tensor::full({1}, 1.0f), 9, 0, 7, 1.0f),
                       doctest::Contains("with zero point 9"), std::runtime_error);
}
