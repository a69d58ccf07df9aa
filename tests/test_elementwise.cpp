// Element-wise, broadcast, shape and reduction ops against plain double loops, and their gradients.
#include <cmath>

#include "engine/ops.h"
#include "engine/random.h"
#include "tests/gradcheck.h"

using namespace engine;
using testing_util::check_close;
using testing_util::check_gradients;

// Reference broadcasting: the flat index into an input of shape `in` for output index `o` of shape `out`.
static int64_t ref_broadcast_index(const Shape& out, const Shape& in, int64_t o) {
  int64_t idx = 0, stride = 1;
  for (int i = out.n - 1, j = in.n - 1; i >= 0; i--, j--) {
    int64_t coord = o % out.d[i];
    o /= out.d[i];
    if (j >= 0) {
      if (in.d[j] != 1) idx += coord * stride;
      stride *= in.d[j];
    }
  }
  return idx;
}

static std::vector<double> ref_binary(char op, const Tensor& a, const Tensor& b, const Shape& out) {
  std::vector<double> r(out.numel());
  for (int64_t o = 0; o < out.numel(); o++) {
    double x = a.f32()[ref_broadcast_index(out, a.shape(), o)], z = b.f32()[ref_broadcast_index(out, b.shape(), o)];
    r[o] = op == '+' ? x + z : op == '-' ? x - z : op == '*' ? x * z : x / z;
  }
  return r;
}

TEST_CASE("binary ops broadcast as NumPy does") {
  Rng rng(1);
  struct Case { Shape a, b, out; };
  std::vector<Case> cases = {
      {{3, 5}, {3, 5}, {3, 5}},
      {{2, 3, 4, 5}, {1, 3, 1, 1}, {2, 3, 4, 5}},  // per-channel shift
      {{6, 4, 3, 3}, {6, 1, 1, 1}, {6, 4, 3, 3}},  // per-output-channel weight scale
      {{7}, {2, 3, 7}, {2, 3, 7}},
      {{1, 5}, {4, 1}, {4, 5}},
      {{2, 1, 3, 1, 5}, {4, 1}, {2, 1, 3, 4, 5}},
      {{}, {3, 2}, {3, 2}},
  };
  for (auto& c : cases) {
    Tensor a = rand_uniform(c.a, -2, 2, rng), b = rand_uniform(c.b, 0.5f, 2, rng);
    check_close(add(a, b).to_vector(), ref_binary('+', a, b, c.out), 1e-6, 1e-6, "add " + c.a.str());
    check_close(sub(a, b).to_vector(), ref_binary('-', a, b, c.out), 1e-6, 1e-6, "sub " + c.a.str());
    check_close(mul(a, b).to_vector(), ref_binary('*', a, b, c.out), 1e-6, 1e-6, "mul " + c.a.str());
    check_close(div(a, b).to_vector(), ref_binary('/', a, b, c.out), 1e-6, 1e-6, "div " + c.a.str());
    CHECK(mul(a, b).shape() == c.out);
  }
  CHECK_THROWS_WITH_AS(add(Tensor::zeros({2, 3}), Tensor::zeros({4, 3})), doctest::Contains("do not broadcast"),
                       std::runtime_error);
}

TEST_CASE("binary op gradients, with broadcasting") {
  Rng rng(2);
  for (auto [sa, sb] : std::vector<std::pair<Shape, Shape>>{{{3, 4}, {3, 4}}, {{2, 3, 2, 2}, {1, 3, 1, 1}}, {{4, 1}, {1, 5}}}) {
    auto a = rand_uniform(sa, -1, 1, rng), b = rand_uniform(sb, 0.5f, 1.5f, rng);
    check_gradients([](auto& in) { return add(in[0], in[1]); }, {a, b});
    check_gradients([](auto& in) { return sub(in[0], in[1]); }, {a, b});
    check_gradients([](auto& in) { return mul(in[0], in[1]); }, {a, b});
    check_gradients([](auto& in) { return div(in[0], in[1]); }, {a, b});
  }
}

TEST_CASE("unary ops against plain loops, and their gradients") {
  Rng rng(3);
  Tensor x = rand_uniform({3, 4, 5}, -2, 2, rng);
  Tensor pos = rand_uniform({3, 4, 5}, 0.5f, 3, rng);
  auto ref = [](const Tensor& t, auto f) {
    std::vector<double> r;
    for (float v : t.to_vector()) r.push_back(f((double)v));
    return r;
  };
  check_close(relu(x).to_vector(), ref(x, [](double v) { return v > 0 ? v : 0; }), 0, 0, "relu");
  check_close(square(x).to_vector(), ref(x, [](double v) { return v * v; }), 1e-6, 0, "square");
  check_close(sqrt(pos).to_vector(), ref(pos, [](double v) { return std::sqrt(v); }), 1e-6, 0, "sqrt");
  check_close(rsqrt(pos).to_vector(), ref(pos, [](double v) { return 1 / std::sqrt(v); }), 1e-6, 0, "rsqrt");
  check_close(clamp(x, -0.5f, 1.f).to_vector(), ref(x, [](double v) { return std::min(std::max(v, -0.5), 1.0); }), 0, 0, "clamp");
  check_close(add_scalar(x, 1.5f).to_vector(), ref(x, [](double v) { return v + 1.5; }), 1e-6, 1e-7, "add_scalar");
  check_close(mul_scalar(x, -3.f).to_vector(), ref(x, [](double v) { return v * -3; }), 1e-6, 0, "mul_scalar");
  check_close(sigmoid(x).to_vector(), ref(x, [](double v) { return 1 / (1 + std::exp(-v)); }), 1e-6, 1e-7, "sigmoid");
  check_close(abs(x).to_vector(), ref(x, [](double v) { return std::fabs(v); }), 0, 0, "abs");
  check_close(pow(pos, 2.5f).to_vector(), ref(pos, [](double v) { return std::pow(v, 2.5); }), 1e-5, 0, "pow");
  check_close(pow(x, 3.f).to_vector(), ref(x, [](double v) { return v * v * v; }), 1e-5, 1e-7, "pow, odd");

  auto away_from = [&](const Tensor& t, std::vector<float> kinks) {
    return [t, kinks](size_t, int64_t i) {
      for (float k : kinks)
        if (std::fabs(t.f32()[i] - k) < 0.05f) return true;
      return false;
    };
  };
  check_gradients([](auto& in) { return relu(in[0]); }, {x}, {.skip = away_from(x, {0})});
  check_gradients([](auto& in) { return square(in[0]); }, {x});
  check_gradients([](auto& in) { return sqrt(in[0]); }, {pos});
  check_gradients([](auto& in) { return rsqrt(in[0]); }, {pos});
  check_gradients([](auto& in) { return clamp(in[0], -0.5f, 1.f); }, {x}, {.skip = away_from(x, {-0.5f, 1.f})});
  check_gradients([](auto& in) { return add_scalar(in[0], 2.f); }, {x});
  check_gradients([](auto& in) { return mul_scalar(in[0], -3.f); }, {x});
  check_gradients([](auto& in) { return sigmoid(in[0]); }, {x});
  check_gradients([](auto& in) { return abs(in[0]); }, {x}, {.skip = away_from(x, {0})});
  check_gradients([](auto& in) { return pow(in[0], 2.5f); }, {pos});
  check_gradients([](auto& in) { return pow(in[0], 3.f); }, {x});
  CHECK(abs(Tensor::from_vector({0.f}, {1}).requires_grad_()).grad_fn() != nullptr);
}

TEST_CASE("round_ste rounds half to even and passes the gradient straight through") {
  Tensor x = Tensor::from_vector({0.5f, 1.5f, 2.5f, -0.5f, -1.5f, 0.49f, 2.51f}, {7});
  CHECK(round_ste(x).to_vector() == std::vector<float>{0, 2, 2, -0, -2, 0, 3});
  x.requires_grad_();
  sum_all(mul_scalar(round_ste(x), 3.f)).backward();
  CHECK(x.grad().to_vector() == std::vector<float>(7, 3.f));
}

TEST_CASE("clamp keeps NaN as PyTorch does, and clamps infinities") {
  const float nan = std::nanf(""), inf = INFINITY;
  std::vector<float> y = clamp(Tensor::from_vector({nan, -inf, inf, -2.f, 0.5f, 2.f}, {6}), -1.f, 1.f).to_vector();
  CHECK(std::isnan(y[0]));
  CHECK(std::vector<float>(y.begin() + 1, y.end()) == std::vector<float>{-1, 1, -1, 0.5f, 1});
}

static std::vector<double> ref_sum(const Tensor& x, const std::vector<int>& dims, Shape& out) {
  const Shape& s = x.shape();
  out = s;
  for (int d : dims) out.d[d] = 1;
  std::vector<double> r(out.numel(), 0.0);
  for (int64_t i = 0; i < x.numel(); i++) {
    int64_t rem = i, o = 0, stride = 1;
    for (int d = s.n - 1; d >= 0; d--) {
      int64_t c = rem % s.d[d];
      rem /= s.d[d];
      if (out.d[d] != 1) o += c * stride;
      stride *= out.d[d];
    }
    r[o] += x.f32()[i];
  }
  return r;
}

TEST_CASE("sum and mean over chosen dims, and global average pooling") {
  Rng rng(4);
  Tensor x = rand_uniform({3, 4, 5, 6}, -1, 1, rng);
  for (auto dims : std::vector<std::vector<int>>{{0}, {1}, {3}, {2, 3}, {0, 2, 3}, {0, 1, 2, 3}, {0, 3}}) {
    Shape out;
    auto r = ref_sum(x, dims, out);
    Tensor s = sum(x, dims, true);
    CHECK(s.shape() == out);
    check_close(s.to_vector(), r, 1e-5, 1e-6, "sum");
    double count = (double)x.numel() / out.numel();
    for (auto& v : r) v /= count;
    check_close(mean(x, dims, false).to_vector(), r, 1e-5, 1e-6, "mean");
    check_gradients([dims](auto& in) { return sum(in[0], dims, false); }, {x});
    check_gradients([dims](auto& in) { return mean(in[0], dims, true); }, {x});
  }
  CHECK(mean(x, {1, 3}, false).shape() == Shape{3, 5});
  CHECK(sum_all(x).shape() == Shape{});
  Shape out;
  auto r = ref_sum(x, {2, 3}, out);
  for (auto& v : r) v /= 30;
  check_close(global_avg_pool(x).to_vector(), r, 1e-5, 1e-6, "gap");
  CHECK(global_avg_pool(x).shape() == Shape{3, 4});
  check_gradients([](auto& in) { return global_avg_pool(in[0]); }, {x});
  check_gradients([](auto& in) { return mean_all(in[0]); }, {x});
}

// pad2d against a plain loop: y[p, i, j] = x[p, i - pad_h, j - pad_w] inside, 0 around.
static std::vector<double> ref_pad2d(const Tensor& x, int pad_h, int pad_w) {
  const int64_t h = x.size(-2), w = x.size(-1), planes = x.numel() / (h * w), ph = h + 2 * pad_h, pw = w + 2 * pad_w;
  std::vector<double> y(planes * ph * pw, 0.0);
  for (int64_t p = 0; p < planes; p++)
    for (int64_t i = 0; i < h; i++)
      for (int64_t j = 0; j < w; j++) y[(p * ph + i + pad_h) * pw + j + pad_w] = x.f32()[(p * h + i) * w + j];
  return y;
}

TEST_CASE("reshape, flatten and pad2d (symmetric and separate pad_h, pad_w) against plain loops, and their gradients") {
  Rng rng(5);
  Tensor k = rand_uniform({4, 2, 1, 1}, -1, 1, rng);
  Tensor p = pad2d(k, 1);
  REQUIRE(p.shape() == Shape{4, 2, 3, 3});
  auto v = p.to_vector(), kv = k.to_vector();
  for (int i = 0; i < 8; i++)
    for (int t = 0; t < 9; t++) CHECK(v[i * 9 + t] == (t == 4 ? kv[i] : 0.f));
  // ACNet's thin kernels: 1x3 into the middle row (pad_h 1), 3x1 into the middle column (pad_w 1)
  Tensor hor = rand_uniform({4, 2, 1, 3}, -1, 1, rng), ver = rand_uniform({4, 2, 3, 1}, -1, 1, rng);
  REQUIRE(pad2d(hor, 1, 0).shape() == Shape{4, 2, 3, 3});
  REQUIRE(pad2d(ver, 0, 1).shape() == Shape{4, 2, 3, 3});
  const auto ph = pad2d(hor, 1, 0).to_vector(), pv = pad2d(ver, 0, 1).to_vector();
  for (int i = 0; i < 8; i++)
    for (int t = 0; t < 9; t++) {
      CHECK(ph[i * 9 + t] == (t / 3 == 1 ? hor.f32()[i * 3 + t % 3] : 0.f));
      CHECK(pv[i * 9 + t] == (t % 3 == 1 ? ver.f32()[i * 3 + t / 3] : 0.f));
    }
  struct Case { Shape shape; int pad_h, pad_w; };
  for (const Case& c : {Case{{2, 3, 4}, 2, 2}, Case{{4, 2, 1, 3}, 1, 0}, Case{{4, 2, 3, 1}, 0, 1},
                        Case{{2, 3, 5, 4}, 2, 1}, Case{{3, 2, 7}, 0, 3}, Case{{5, 6}, 0, 0}}) {
    INFO(c.shape.str() << " by " << c.pad_h << ", " << c.pad_w);
    Tensor x = rand_uniform(c.shape, -1, 1, rng);
    Tensor y = pad2d(x, c.pad_h, c.pad_w);
    Shape expected = c.shape;
    expected[-2] += 2 * c.pad_h;
    expected[-1] += 2 * c.pad_w;
    CHECK(y.shape() == expected);
    check_close(y.to_vector(), ref_pad2d(x, c.pad_h, c.pad_w), 0, 0, "pad2d");
    check_gradients([c](auto& in) { return pad2d(in[0], c.pad_h, c.pad_w); }, {x});
  }
  CHECK_THROWS_WITH_AS(pad2d(k, -1, 0), doctest::Contains("pad2d of"), std::runtime_error);
  Tensor x = rand_uniform({2, 3, 4, 5}, -1, 1, rng);
  CHECK(flatten(x).shape() == Shape{2, 60});
  CHECK(flatten(x).to_vector() == x.to_vector());
  check_gradients([](auto& in) { return reshape(in[0], {6, 20}); }, {x});
}

TEST_CASE("gradient check: a pad2d backward that crops the wrong rows fails the checker") {
  Rng rng(10);
  const Tensor hor = rand_uniform({4, 2, 1, 3}, -1, 1, rng);
  using testing_util::gradient_errors;
  CHECK(gradient_errors([](auto& in) { return pad2d(in[0], 1, 0); }, {hor})[0] <= testing_util::GradCheck{}.tolerance);
  const double wrong = gradient_errors([](auto& in) { return testing_util::pad2d_with_wrong_backward(in[0], 1, 0); }, {hor})[0];
  INFO("relative gradient error of the wrong backward: " << wrong);
  CHECK(wrong > 0.5);
}

TEST_CASE("autograd: shared inputs accumulate, no-grad records nothing, detach cuts the graph") {
  Tensor x = Tensor::from_vector({1, 2, 3}, {3}).requires_grad_();
  Tensor y = mul(x, x);  // dy/dx = 2x, reached through both operands
  Tensor z = add(y, x);  // + 1
  sum_all(z).backward();
  CHECK(x.grad().to_vector() == std::vector<float>{3, 5, 7});
  sum_all(x).backward();  // leaves accumulate across backward calls
  CHECK(x.grad().to_vector() == std::vector<float>{4, 6, 8});
  {
    NoGradGuard g;
    CHECK_FALSE(mul(x, x).requires_grad());
  }
  Tensor w = Tensor::from_vector({2, 2, 2}, {3}).requires_grad_();
  Tensor d = mul(x.detach(), w);
  CHECK_FALSE(d.grad_fn() == nullptr);
  sum_all(d).backward();
  CHECK(w.grad().to_vector() == std::vector<float>{1, 2, 3});
  CHECK(x.grad().to_vector() == std::vector<float>{4, 6, 8});
}

TEST_CASE("gradients reach a weight computed from other parameters") {
  // The merged RepVGG kernel is such a weight: W = pad(K1) * s1 + K3 * s3.
  Rng rng(6);
  Tensor k3 = rand_uniform({2, 2, 3, 3}, -1, 1, rng), k1 = rand_uniform({2, 2, 1, 1}, -1, 1, rng);
  Tensor s3 = rand_uniform({2, 1, 1, 1}, 0.5f, 1.5f, rng), s1 = rand_uniform({2, 1, 1, 1}, 0.5f, 1.5f, rng);
  check_gradients([](auto& in) { return add(mul(in[0], in[1]), mul(pad2d(in[2], 1), in[3])); }, {k3, s3, k1, s1});
}

// The checker itself must be able to fail: an op whose backward is off by a factor, for gradients far
// below 1 (a mean over 120 elements has gradients 1/120), or that drops one input's gradient.
static Tensor mean_with_wrong_backward(const Tensor& x, float factor) {
  Tensor y = mean_all(x.detach());
  engine::record(y, "wrong_mean", {x}, [factor](const Tensor& out, const Tensor& g) {
    const Tensor& in = out.grad_fn()->inputs[0];
    const float value = g.item() * factor / (float)in.numel();
    engine::accumulate_grad(in, Tensor::full(in.shape(), value));
  });
  return y;
}

TEST_CASE("gradient check: a backward at half or twice its value, or a missing gradient, fails the checker") {
  Rng rng(9);
  Tensor x = rand_uniform({3, 4, 10}, -1, 1, rng);
  using testing_util::gradient_errors;
  const double tol = testing_util::GradCheck{}.tolerance;
  CHECK(gradient_errors([](auto& in) { return mean_with_wrong_backward(in[0], 1.0f); }, {x})[0] <= tol);
  CHECK(gradient_errors([](auto& in) { return mean_with_wrong_backward(in[0], 0.5f); }, {x})[0] > 0.4);
  CHECK(gradient_errors([](auto& in) { return mean_with_wrong_backward(in[0], 2.0f); }, {x})[0] > 0.9);
  CHECK(gradient_errors([](auto& in) { return mean_with_wrong_backward(in[0], 0.0f); }, {x})[0] >= 1.0);
  Tensor z = rand_uniform({3, 4, 10}, -1, 1, rng);  // the output depends on z, but no gradient reaches it
  const auto e = gradient_errors([](auto& in) { return add(mean_all(in[0]), mean_all(in[1].detach())); }, {x, z});
  CHECK(e[0] <= tol);
  CHECK(e[1] == INFINITY);
}
