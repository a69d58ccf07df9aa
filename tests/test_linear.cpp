// linear against plain double loops (forward, gradients of x, w and bias), central differences, the
// primitive cache and shape errors.
#include "engine/cpu/dnnl.h"
#include "engine/ops.h"
#include "engine/random.h"
#include "tests/gradcheck.h"

using namespace engine;
using testing_util::check_close;
using testing_util::check_gradients;

namespace {

struct LinearCase {
  int64_t n, i, o;
  bool bias;
};

// y [N, O] = x [N, I] wᵀ + b
std::vector<double> ref_linear(const LinearCase& k, const Tensor& x, const Tensor& w, const Tensor& b) {
  std::vector<double> y(k.n * k.o);
  for (int64_t n = 0; n < k.n; n++)
    for (int64_t o = 0; o < k.o; o++) {
      double acc = k.bias ? b.f32()[o] : 0.0;
      for (int64_t i = 0; i < k.i; i++) acc += (double)x.f32()[n * k.i + i] * w.f32()[o * k.i + i];
      y[n * k.o + o] = acc;
    }
  return y;
}

// gx = gy w, gw = gyᵀ x, gb = gy summed over N
struct RefGrads {
  std::vector<double> gx, gw, gb;
};
RefGrads ref_linear_backward(const LinearCase& k, const Tensor& x, const Tensor& w, const Tensor& gy) {
  RefGrads g{std::vector<double>(k.n * k.i), std::vector<double>(k.o * k.i), std::vector<double>(k.o)};
  for (int64_t n = 0; n < k.n; n++)
    for (int64_t o = 0; o < k.o; o++) {
      double gyv = gy.f32()[n * k.o + o];
      g.gb[o] += gyv;
      for (int64_t i = 0; i < k.i; i++) {
        g.gx[n * k.i + i] += gyv * w.f32()[o * k.i + i];
        g.gw[o * k.i + i] += gyv * x.f32()[n * k.i + i];
      }
    }
  return g;
}

const std::vector<LinearCase> cases = {
    {1, 5, 3, true},     // batch 1
    {7, 13, 4, false},   // odd sizes
    {33, 64, 10, true},  // a classifier head
    {16, 1, 1, true},
    {4, 300, 17, false},
};

}  // namespace

TEST_CASE("linear forward and gradients against plain loops") {
  Rng rng(21);
  for (const LinearCase& k : cases) {
    std::string what = "N " + std::to_string(k.n) + " I " + std::to_string(k.i) + " O " + std::to_string(k.o);
    Tensor x = rand_uniform({k.n, k.i}, -1, 1, rng), w = rand_uniform({k.o, k.i}, -1, 1, rng);
    Tensor b = k.bias ? rand_uniform({k.o}, -1, 1, rng) : Tensor();
    x.requires_grad_();
    w.requires_grad_();
    if (k.bias) b.requires_grad_();
    Tensor y = linear(x, w, b);
    REQUIRE(y.shape() == Shape{k.n, k.o});
    check_close(y.to_vector(), ref_linear(k, x, w, b), 1e-4, 1e-4, "forward " + what);
    Tensor gy = rand_uniform({k.n, k.o}, -1, 1, rng);
    sum_all(mul(y, gy)).backward();
    RefGrads ref = ref_linear_backward(k, x, w, gy);
    check_close(x.grad().to_vector(), ref.gx, 1e-4, 1e-4, "gx " + what);
    check_close(w.grad().to_vector(), ref.gw, 1e-4, 1e-4, "gw " + what);
    if (k.bias) check_close(b.grad().to_vector(), ref.gb, 1e-4, 1e-4, "gb " + what);
  }
}

TEST_CASE("linear gradients reach only the inputs that require them") {
  Rng rng(22);
  LinearCase k{6, 9, 5, true};
  Tensor x = rand_uniform({k.n, k.i}, -1, 1, rng), w = rand_uniform({k.o, k.i}, -1, 1, rng);
  Tensor b = rand_uniform({k.o}, -1, 1, rng), gy = rand_uniform({k.n, k.o}, -1, 1, rng);
  RefGrads ref = ref_linear_backward(k, x, w, gy);
  b.requires_grad_();  // a trained bias on a frozen weight
  sum_all(mul(linear(x, w, b), gy)).backward();
  check_close(b.grad().to_vector(), ref.gb, 1e-4, 1e-4, "bias alone");
  CHECK_FALSE(w.grad().defined());
  b.requires_grad_(false);
  x.requires_grad_();
  sum_all(mul(linear(x, w, b), gy)).backward();
  check_close(x.grad().to_vector(), ref.gx, 1e-4, 1e-4, "x alone");
  CHECK_FALSE(w.grad().defined());
}

TEST_CASE("linear gradients by central differences") {
  Rng rng(23);
  Tensor x = rand_uniform({3, 5}, -1, 1, rng), w = rand_uniform({4, 5}, -1, 1, rng), b = rand_uniform({4}, -1, 1, rng);
  check_gradients([](auto& in) { return linear(in[0], in[1], in[2]); }, {x, w, b});
  check_gradients([](auto& in) { return linear(in[0], in[1], Tensor()); }, {x, w});
}

TEST_CASE("linear matches PyTorch") {
  // torch.nn.functional.linear(x, w, b), x [2, 3] = i % 4 - 1.5, w [2, 3] = i % 3 - 1, b = [0.25, -0.5]
  Tensor x = Tensor::from_vector({-1.5f, -0.5f, 0.5f, 1.5f, -1.5f, -0.5f}, {2, 3});
  Tensor w = Tensor::from_vector({-1, 0, 1, -1, 0, 1}, {2, 3});
  CHECK(linear(x, w, Tensor::from_vector({0.25f, -0.5f}, {2})).to_vector() == std::vector<float>{2.25, 1.5, -1.75, -2.5});
}

TEST_CASE("linear creates its primitives once per shape") {
  using engine::cpu::dnnl_primitives_created;
  Rng rng(24);
  Tensor x = rand_uniform({11, 23}, -1, 1, rng), w = rand_uniform({7, 23}, -1, 1, rng), b = rand_uniform({7}, -1, 1, rng);
  x.requires_grad_();
  w.requires_grad_();
  b.requires_grad_();
  auto step = [&] { sum_all(linear(x, w, b)).backward(); };
  uint64_t before = dnnl_primitives_created();
  step();
  uint64_t warm = dnnl_primitives_created();
  CHECK(warm > before);
  step();
  CHECK(dnnl_primitives_created() == warm);
  { NoGradGuard g; linear(rand_uniform({12, 23}, -1, 1, rng), w, b); }  // a new batch size
  CHECK(dnnl_primitives_created() > warm);
}

TEST_CASE("linear rejects shapes that do not fit") {
  auto throws = [](auto f, const char* what) { CHECK_THROWS_WITH_AS(f(), doctest::Contains(what), std::runtime_error); };
  Tensor x = Tensor::zeros({4, 6});
  throws([&] { linear(x, Tensor::zeros({3, 5}), Tensor()); }, "weight must be [O, I] with I = 6");
  throws([&] { linear(x, Tensor::zeros({3, 6, 1}), Tensor()); }, "weight must be [O, I]");
  throws([&] { linear(Tensor::zeros({4, 6, 1}), Tensor::zeros({3, 6}), Tensor()); }, "x must be [N, I]");
  throws([&] { linear(x, Tensor::zeros({3, 6}), Tensor::zeros({4})); }, "bias must be [3]");
}
