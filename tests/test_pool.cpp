// max_pool2d (engine/pool.cpp) against a plain loop: the values and the gradient's routing exactly, plain and
// blocked, with ties, −inf and NaN broken as PyTorch's CPU kernel breaks them; a finite-difference check on
// inputs without ties, which a wrong backward fails; and the int8 runtime's NHWC loops (engine/cpu/int8.h)
// against the same loop.
#include <algorithm>
#include <cmath>
#include <numeric>

#include "engine/cpu/int8.h"
#include "engine/ops.h"
#include "engine/random.h"
#include "tests/gradcheck.h"

using namespace engine;
using testing_util::check_gradients;
using testing_util::gradient_errors;

namespace {

struct Pool {
  int k, s, p;
  std::string str() const {
    return "kernel " + std::to_string(k) + ", stride " + std::to_string(s) + ", padding " + std::to_string(p);
  }
};

// y [N, C, H', W'] of x [N, C, H, W] (NCHW values) and each output's argmax i * W + j within its plane, by the
// definition: the window's values in row-major order, the padding skipped (−inf, never the max), the first
// one the max so far and then any larger one or any NaN taking its place (PyTorch's CPU kernel).
struct PoolRef {
  int64_t oh = 0, ow = 0;
  std::vector<float> y;
  std::vector<int64_t> at;
};
PoolRef ref_max_pool(const std::vector<float>& x, const Shape& xs, Pool q) {
  const int64_t planes = xs[0] * xs[1], h = xs[2], w = xs[3];
  PoolRef r;
  r.oh = (h + 2 * q.p - q.k) / q.s + 1;
  r.ow = (w + 2 * q.p - q.k) / q.s + 1;
  for (int64_t pl = 0; pl < planes; pl++)
    for (int64_t oi = 0; oi < r.oh; oi++)
      for (int64_t oj = 0; oj < r.ow; oj++) {
        float m = 0;
        int64_t at = -1;
        for (int u = 0; u < q.k; u++)
          for (int v = 0; v < q.k; v++) {
            const int64_t i = oi * q.s - q.p + u, j = oj * q.s - q.p + v;
            if (i < 0 || i >= h || j < 0 || j >= w) continue;
            const float val = x[(pl * h + i) * w + j];
            if (at < 0 || val > m || std::isnan(val)) m = val, at = i * w + j;
          }
        r.y.push_back(m);
        r.at.push_back(at);
      }
  return r;
}

// gx [N, C, H, W]: each output's gy added at its argmax, in double.
std::vector<double> ref_route(const PoolRef& r, const std::vector<float>& gy, const Shape& xs) {
  const int64_t hw = xs[2] * xs[3], out = r.oh * r.ow;
  std::vector<double> gx(xs.numel(), 0.0);
  for (size_t e = 0; e < r.at.size(); e++) gx[(int64_t)e / out * hw + r.at[e]] += gy[e];
  return gx;
}

// a == b element by element, NaN equal to NaN; reports the first difference.
void check_same(const std::vector<float>& a, const std::vector<float>& b, const std::string& what) {
  REQUIRE_MESSAGE(a.size() == b.size(), what << ": " << a.size() << " vs " << b.size() << " values");
  size_t i = 0;
  while (i < a.size() && (a[i] == b[i] || (std::isnan(a[i]) && std::isnan(b[i])))) i++;
  INFO(what << ": first difference at " << i << ": " << (i < a.size() ? a[i] : 0.f) << " vs "
            << (i < b.size() ? b[i] : 0.f));
  CHECK(i == a.size());
}

// The windows the tests pool with, on x [N, C, H, W].
struct Case {
  Shape x;
  Pool q;
  const char* what;
};
const std::vector<Case> cases = {
    {{2, 16, 9, 9}, {3, 2, 1}, "ResNet's stem, odd size"},
    {{2, 16, 8, 8}, {3, 2, 1}, "ResNet's stem, even size: the last window reaches the padding"},
    {{1, 16, 7, 10}, {2, 2, 0}, "2x2, stride 2, the last row and column left out"},
    {{3, 32, 6, 5}, {3, 1, 1}, "3x3, stride 1: every input in up to 9 windows"},
    {{2, 8, 5, 7}, {2, 3, 1}, "stride beyond the kernel: inputs in no window"},
    {{2, 16, 4, 4}, {4, 1, 2}, "kernel 4, padding 2: windows mostly padding"},
    {{2, 16, 1, 1}, {1, 1, 0}, "H = W = 1"},
    {{2, 3, 5, 5}, {3, 2, 1}, "3 channels (plain only)"},
    {{2, 32, 40, 40}, {3, 2, 1}, "threaded"},
};

// Values of x: distinct (normal), ties (integers in [-2, 1]: most windows hold their max more than once), or
// ties with −inf (whole windows of it) and NaN.
enum class Values { distinct, ties, special };
std::vector<float> make_values(const Shape& s, Values kind, Rng& rng) {
  std::vector<float> v(s.numel());
  for (float& x : v) {
    x = kind == Values::distinct ? (float)rng.normal() : std::floor(rng.uniform(-2.f, 2.f));
    if (kind == Values::special && rng.below(4) == 0) x = -INFINITY;
    if (kind == Values::special && rng.below(40) == 0) x = NAN;
  }
  return v;
}

}  // namespace

TEST_CASE("max_pool2d: values, argmax and the gradient's routing equal a plain loop exactly, plain and blocked, "
          "with ties, -inf and NaN") {
  Rng rng(41);
  for (const Case& c : cases)
    for (Values kind : {Values::distinct, Values::ties, Values::special})
      for (int64_t block : {0, 8, 16}) {
        if (block && c.x[1] % block != 0) continue;
        const std::string what = std::string(c.what) + " " + c.x.str() + ", " + c.q.str() +
                                 (kind == Values::distinct ? "" : kind == Values::ties ? ", ties" : ", -inf and NaN") +
                                 (block ? ", blocks of " + std::to_string(block) : "");
        const std::vector<float> xv = make_values(c.x, kind, rng);
        const PoolRef ref = ref_max_pool(xv, c.x, c.q);
        Tensor x = Tensor::from_vector(xv, c.x).requires_grad_();
        Tensor y = max_pool2d(to_layout(x, block), c.q.k, c.q.s, c.q.p);
        REQUIRE(y.shape() == Shape{c.x[0], c.x[1], ref.oh, ref.ow});
        CHECK(y.channel_block() == block);
        check_same(y.to_vector(), ref.y, "y " + what);
        // gradients of small integers: every sum exact, so the routing is compared exactly
        std::vector<float> gv(y.numel());
        for (float& g : gv) g = (float)rng.below(9) - 4.f;
        sum_all(mul(y, Tensor::from_vector(gv, y.shape()))).backward();
        const std::vector<double> want = ref_route(ref, gv, c.x);
        check_same(x.grad().to_vector(), std::vector<float>(want.begin(), want.end()), "gx " + what);
      }
}

TEST_CASE("max_pool2d: ResNet's stem, 112x112 to 56x56, in inference (no gradient recorded, no argmax kept)") {
  Rng rng(42);
  Tensor x = rand_normal({1, 16, 112, 112}, 0, 1, rng);
  NoGradGuard g;
  Tensor y = max_pool2d(x, 3, 2, 1);
  CHECK(y.shape() == Shape{1, 16, 56, 56});
  CHECK(y.grad_fn() == nullptr);
  check_same(y.to_vector(), ref_max_pool(x.to_vector(), x.shape(), {3, 2, 1}).y, "y");
}

namespace {

// x [N, C, H, W] whose values are a shuffled ladder of steps of 0.05: no ties, and no argmax moves under the
// gradient check's ±0.01.
Tensor no_ties(const Shape& s, Rng& rng) {
  std::vector<float> v(s.numel());
  std::iota(v.begin(), v.end(), 0.f);
  for (size_t i = v.size(); i > 1; i--) std::swap(v[i - 1], v[rng.below(i)]);
  for (float& x : v) x = 0.05f * x - 1.f;
  return Tensor::from_vector(v, s);
}

// max_pool2d's values, with a backward of the plain loop's routing, or of a mistake in it: `overwrite` stores
// each output's gradient at its argmax instead of adding it (where windows overlap, an input that is the max
// of two keeps one gradient), `neighbour` routes it to the element after the argmax.
enum class Mistake { none, overwrite, neighbour };
Tensor max_pool_with_backward(const Tensor& x, Pool q, Mistake mistake) {
  Tensor y = max_pool2d(x.detach(), q.k, q.s, q.p);
  record(y, "max_pool2d_by_hand", {x}, [q, mistake](const Tensor& out, const Tensor& g) {
    const Tensor& in = out.grad_fn()->inputs[0];
    const PoolRef r = ref_max_pool(in.to_vector(), in.shape(), q);
    const std::vector<float> gv = g.to_vector();
    const int64_t hw = in.size(2) * in.size(3), per_plane = r.oh * r.ow;
    std::vector<float> gx(in.numel(), 0.f);
    for (size_t e = 0; e < r.at.size(); e++) {
      const int64_t plane = (int64_t)e / per_plane;
      const int64_t at = mistake == Mistake::neighbour ? (r.at[e] + 1) % hw : r.at[e];
      float& dst = gx[plane * hw + at];
      dst = mistake == Mistake::overwrite ? gv[e] : dst + gv[e];
    }
    accumulate_grad(in, Tensor::from_vector(gx, in.shape()));
  });
  return y;
}

}  // namespace

TEST_CASE("max_pool2d: finite-difference gradient check on inputs without ties, plain and blocked") {
  Rng rng(43);
  struct C {
    Shape x;
    Pool q;
    int64_t block;
  };
  for (C c : {C{{2, 3, 5, 5}, {3, 2, 1}, 0}, C{{2, 2, 4, 5}, {2, 1, 0}, 0}, C{{1, 16, 6, 6}, {3, 2, 1}, 8},
              C{{1, 16, 6, 7}, {3, 2, 1}, 16}, C{{1, 16, 5, 5}, {3, 1, 1}, 16}}) {
    INFO(c.x.str() << ", " << c.q.str() << ", block " << c.block);
    check_gradients([c](const std::vector<Tensor>& in) { return max_pool2d(to_layout(in[0], c.block), c.q.k, c.q.s, c.q.p); },
                    {no_ties(c.x, rng)});
  }
}

TEST_CASE("max_pool2d: the gradient check fails a backward that overwrites where windows overlap, or routes to "
          "the neighbour") {
  Rng rng(44);
  const Pool stem{3, 2, 1};
  const Tensor x = no_ties({2, 3, 8, 8}, rng);
  auto error = [&](Mistake m) {
    return gradient_errors([&](const std::vector<Tensor>& in) { return max_pool_with_backward(in[0], stem, m); }, {x})[0];
  };
  const double right = error(Mistake::none), overwrite = error(Mistake::overwrite), neighbour = error(Mistake::neighbour);
  INFO("relative gradient errors: the plain loop's routing " << right << ", overwriting " << overwrite
                                                                 << ", the neighbour " << neighbour);
  CHECK(right <= testing_util::GradCheck{}.tolerance);
  CHECK(overwrite > 0.25);  // 0.51 here: an input that is the max of two overlapping windows keeps one gradient
  CHECK(neighbour > 1.0);
}

TEST_CASE("max_pool2d: refuses a padding beyond half the kernel, empty windows and strides, and x not 4-D") {
  Tensor x = Tensor::zeros({1, 2, 5, 5});
  CHECK_THROWS_WITH_AS(max_pool2d(x, 3, 2, 2), doctest::Contains("padding <= kernel / 2"), std::runtime_error);
  CHECK_THROWS_WITH_AS(max_pool2d(x, 0, 1, 0), doctest::Contains("kernel >= 1"), std::runtime_error);
  CHECK_THROWS_WITH_AS(max_pool2d(x, 2, 0, 0), doctest::Contains("stride >= 1"), std::runtime_error);
  CHECK_THROWS_WITH_AS(max_pool2d(x, 8, 1, 1), doctest::Contains("larger than the padded input"), std::runtime_error);
  CHECK_THROWS_WITH_AS(max_pool2d(Tensor::zeros({2, 5, 5}), 3, 2, 1), doctest::Contains("[N, C, H, W]"),
                       std::runtime_error);
}

TEST_CASE("int8 max_pool_nhwc_u8 and max_pool_nhwc_f32 equal max_pool2d's plain loop") {
  Rng rng(45);
  for (const Case& c : cases) {
    const int64_t n = c.x[0], ch = c.x[1], h = c.x[2], w = c.x[3];
    // NCHW values of [n, ch, hh, ww] in NHWC order
    auto to_nhwc = [&](const std::vector<float>& v, int64_t hh, int64_t ww) {
      std::vector<float> r(v.size());
      for (int64_t b = 0; b < n; b++)
        for (int64_t k = 0; k < ch; k++)
          for (int64_t i = 0; i < hh * ww; i++) r[(b * hh * ww + i) * ch + k] = v[(b * ch + k) * hh * ww + i];
      return r;
    };
    const std::string what = std::string(c.what) + " " + c.x.str() + ", " + c.q.str();
    // u8 codes: every value in [0, 255], many ties
    std::vector<float> codes(c.x.numel());
    for (float& v : codes) v = (float)rng.below(256);
    const PoolRef ref_u8 = ref_max_pool(codes, c.x, c.q);
    const std::vector<float> codes_nhwc = to_nhwc(codes, h, w);
    std::vector<uint8_t> xu(codes_nhwc.begin(), codes_nhwc.end()), yu(ref_u8.y.size());
    cpu::max_pool_nhwc_u8(n, h, w, ch, c.q.k, c.q.s, c.q.p, xu.data(), yu.data());
    check_same(std::vector<float>(yu.begin(), yu.end()), to_nhwc(ref_u8.y, ref_u8.oh, ref_u8.ow), "u8 " + what);
    // f32, with ties, -inf and NaN
    const std::vector<float> xf = make_values(c.x, Values::special, rng), xf_nhwc = to_nhwc(xf, h, w);
    const PoolRef ref_f32 = ref_max_pool(xf, c.x, c.q);
    std::vector<float> yf(ref_f32.y.size());
    cpu::max_pool_nhwc_f32(n, h, w, ch, c.q.k, c.q.s, c.q.p, xf_nhwc.data(), yf.data());
    check_same(yf, to_nhwc(ref_f32.y, ref_f32.oh, ref_f32.ow), "f32 " + what);
  }
}
