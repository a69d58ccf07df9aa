// conv2d against plain double loops (forward, gradients of x, w and bias), central differences, the
// primitive cache, determinism and shape errors.
#include <cstring>

#include "engine/allocator.h"
#include "engine/cpu/dnnl.h"
#include "engine/cpu/winograd.h"
#include "engine/ops.h"
#include "engine/random.h"
#include "tests/gradcheck.h"
#include "tests/testing.h"

using namespace engine;
using testing_util::check_close;
using testing_util::check_gradients;

namespace {

struct ConvCase {
  int64_t n, c, h, w, o, kh, kw;
  int stride, pad, groups;  // pad: rows above and below (and columns, unless pad_w says otherwise)
  bool bias;
  int pad_w = -1;           // columns left and right; -1: pad
  int pw() const { return pad_w < 0 ? pad : pad_w; }
  Padding padding() const { return {pad, pw()}; }
  int64_t oh() const { return (h + 2 * pad - kh) / stride + 1; }
  int64_t ow() const { return (w + 2 * pw() - kw) / stride + 1; }
  std::string str() const {
    return "x [" + std::to_string(n) + ", " + std::to_string(c) + ", " + std::to_string(h) + ", " + std::to_string(w) +
           "] o " + std::to_string(o) + " k " + std::to_string(kh) + "x" + std::to_string(kw) + " stride " +
           std::to_string(stride) + " pad " + std::to_string(pad) + " groups " + std::to_string(groups) +
           (bias ? " bias" : "");
  }
};

// Visits every (output element, input element, weight element) triple of the convolution, with flat indices.
template <class F>
void ref_conv_loops(const ConvCase& k, F f) {
  int64_t cg = k.c / k.groups, og = k.o / k.groups;
  for (int64_t n = 0; n < k.n; n++)
    for (int64_t o = 0; o < k.o; o++)
      for (int64_t oy = 0; oy < k.oh(); oy++)
        for (int64_t ox = 0; ox < k.ow(); ox++) {
          int64_t yi = ((n * k.o + o) * k.oh() + oy) * k.ow() + ox;
          for (int64_t ci = 0; ci < cg; ci++)
            for (int64_t ky = 0; ky < k.kh; ky++)
              for (int64_t kx = 0; kx < k.kw; kx++) {
                int64_t iy = oy * k.stride - k.pad + ky, ix = ox * k.stride - k.pw() + kx;
                if (iy < 0 || iy >= k.h || ix < 0 || ix >= k.w) continue;
                int64_t c = o / og * cg + ci;
                f(yi, ((n * k.c + c) * k.h + iy) * k.w + ix, ((o * cg + ci) * k.kh + ky) * k.kw + kx);
              }
        }
}

std::vector<double> ref_conv_forward(const ConvCase& k, const Tensor& x, const Tensor& w, const Tensor& b) {
  std::vector<double> y(k.n * k.o * k.oh() * k.ow(), 0.0);
  if (k.bias)
    for (size_t i = 0; i < y.size(); i++) y[i] = b.f32()[i / (k.oh() * k.ow()) % k.o];
  ref_conv_loops(k, [&](int64_t yi, int64_t xi, int64_t wi) { y[yi] += (double)x.f32()[xi] * w.f32()[wi]; });
  return y;
}

struct RefGrads {
  std::vector<double> gx, gw, gb;
};

RefGrads ref_conv_backward(const ConvCase& k, const Tensor& x, const Tensor& w, const Tensor& gy) {
  RefGrads g{std::vector<double>(x.numel()), std::vector<double>(w.numel()), std::vector<double>(k.o)};
  ref_conv_loops(k, [&](int64_t yi, int64_t xi, int64_t wi) {
    g.gx[xi] += (double)gy.f32()[yi] * w.f32()[wi];
    g.gw[wi] += (double)gy.f32()[yi] * x.f32()[xi];
  });
  for (int64_t i = 0; i < gy.numel(); i++) g.gb[i / (k.oh() * k.ow()) % k.o] += gy.f32()[i];
  return g;
}

const std::vector<ConvCase> cases = {
    // n  c   h   w   o  kh kw  s  p  g  bias
    {2, 3, 7, 5, 4, 3, 3, 1, 1, 1, true},     // odd sizes, 3 input channels
    {1, 4, 6, 6, 6, 1, 1, 1, 0, 2, false},    // batch 1, 1x1, groups 2
    {3, 8, 9, 7, 8, 3, 3, 2, 1, 4, true},     // stride 2, groups 4
    {2, 4, 8, 8, 4, 3, 3, 2, 0, 1, false},    // stride 2, no padding
    {2, 6, 5, 7, 4, 1, 1, 2, 0, 2, true},     // 1x1 stride 2 (a RepVGG downsampling branch), groups 2
    {2, 4, 6, 5, 4, 3, 3, 1, 1, 4, true},     // depthwise
    {1, 2, 6, 5, 3, 2, 3, 1, 1, 1, true},     // non-square kernel
    {2, 32, 10, 9, 48, 3, 3, 1, 1, 1, true},  // channels in multiples of 16: blocked layouts
    {2, 64, 7, 6, 64, 3, 3, 2, 1, 2, true},   // blocked, grouped, strided
    {1, 32, 5, 5, 16, 1, 1, 1, 0, 1, false},  // 1x1 with many channels
    {2, 3, 11, 11, 16, 3, 3, 2, 1, 1, true},  // a stem: 3 channels in, stride 2
    {2, 4, 6, 7, 4, 1, 3, 1, 0, 1, true, 1},       // 1x3, padding (0, 1): ACNet's hor_conv
    {2, 32, 9, 8, 32, 3, 1, 2, 1, 2, false, 0},    // 3x1, padding (1, 0): ver_conv, blocked, strided, grouped
    {1, 16, 5, 4, 16, 3, 3, 1, 2, 1, true, 0},     // 3x3 padded rows only
    {2, 16, 12, 10, 24, 3, 3, 1, 1, 1, true},      // 240 output pixels: our Winograd where oneDNN has none (AVX2)
};

struct ConvInputs {
  Tensor x, w, b;
};

ConvInputs random_inputs(const ConvCase& k, Rng& rng) {
  return {rand_uniform({k.n, k.c, k.h, k.w}, -1, 1, rng), rand_uniform({k.o, k.c / k.groups, k.kh, k.kw}, -1, 1, rng),
          k.bias ? rand_uniform({k.o}, -1, 1, rng) : Tensor()};
}

}  // namespace

TEST_CASE("conv2d forward against plain loops") {
  Rng rng(11);
  for (const ConvCase& k : cases) {
    auto [x, w, b] = random_inputs(k, rng);
    Tensor y = conv2d(x, w, b, k.stride, k.padding(), k.groups);
    REQUIRE(y.shape() == Shape{k.n, k.o, k.oh(), k.ow()});
    check_close(y.to_vector(), ref_conv_forward(k, x, w, b), 1e-4, 1e-4, "forward " + k.str());
  }
}

TEST_CASE("conv2d gradients of x, weight and bias against plain loops") {
  Rng rng(12);
  for (const ConvCase& k : cases) {
    auto [x, w, b] = random_inputs(k, rng);
    x.requires_grad_();
    w.requires_grad_();
    if (k.bias) b.requires_grad_();
    Tensor gy = rand_uniform({k.n, k.o, k.oh(), k.ow()}, -1, 1, rng);
    sum_all(mul(conv2d(x, w, b, k.stride, k.padding(), k.groups), gy)).backward();  // d loss / d y = gy
    RefGrads ref = ref_conv_backward(k, x, w, gy);
    check_close(x.grad().to_vector(), ref.gx, 1e-4, 1e-4, "backward data " + k.str());
    check_close(w.grad().to_vector(), ref.gw, 1e-4, 1e-4, "backward weight " + k.str());
    if (k.bias) check_close(b.grad().to_vector(), ref.gb, 1e-4, 1e-4, "bias " + k.str());
  }
}

TEST_CASE("conv2d gradients reach only the inputs that require them") {
  Rng rng(13);
  ConvCase k{2, 4, 5, 6, 4, 3, 3, 1, 1, 2, true};
  auto [x, w, b] = random_inputs(k, rng);
  Tensor gy = rand_uniform({k.n, k.o, k.oh(), k.ow()}, -1, 1, rng);
  RefGrads ref = ref_conv_backward(k, x, w, gy);
  b.requires_grad_();  // a trained bias on a frozen weight and input
  sum_all(mul(conv2d(x, w, b, k.stride, k.padding(), k.groups), gy)).backward();
  check_close(b.grad().to_vector(), ref.gb, 1e-4, 1e-4, "bias alone");
  CHECK_FALSE(w.grad().defined());
  CHECK_FALSE(x.grad().defined());
  b.requires_grad_(false);
  x.requires_grad_();
  sum_all(mul(conv2d(x, w, b, k.stride, k.padding(), k.groups), gy)).backward();
  check_close(x.grad().to_vector(), ref.gx, 1e-4, 1e-4, "x alone");
  CHECK_FALSE(w.grad().defined());
}

TEST_CASE("conv2d gradients by central differences") {
  Rng rng(14);
  for (ConvCase k : {ConvCase{2, 4, 5, 4, 4, 3, 3, 2, 1, 2, true}, ConvCase{1, 3, 4, 3, 2, 1, 1, 1, 0, 1, false},
                     ConvCase{1, 2, 3, 4, 2, 3, 3, 1, 0, 1, true}, ConvCase{1, 2, 4, 5, 2, 1, 3, 2, 0, 1, true, 1},
                     ConvCase{2, 2, 5, 3, 2, 3, 1, 1, 1, 2, false, 0},
                     ConvCase{1, 8, 16, 13, 8, 3, 3, 1, 1, 1, true}}) {  // 208 output pixels: our F(4x4) Winograd under AVX2
    auto [x, w, b] = random_inputs(k, rng);
    if (k.bias)
      check_gradients([k](auto& in) { return conv2d(in[0], in[1], in[2], k.stride, k.padding(), k.groups); }, {x, w, b});
    else
      check_gradients([k](auto& in) { return conv2d(in[0], in[1], Tensor(), k.stride, k.padding(), k.groups); }, {x, w});
  }
}

TEST_CASE("conv2d matches PyTorch on a grouped, strided, padded case") {
  // torch.nn.functional.conv2d(x, w, b, stride=2, padding=1, groups=2) with x [1, 4, 3, 3] = i % 7 - 3,
  // w [4, 2, 2, 2] = i % 5 - 2, b = [0.5, -1, 2, 0] (PyTorch 1.13).
  std::vector<float> xv(36), wv(32);
  for (int i = 0; i < 36; i++) xv[i] = float(i % 7 - 3);
  for (int i = 0; i < 32; i++) wv[i] = float(i % 5 - 2);
  Tensor y = conv2d(Tensor::from_vector(xv, {1, 4, 3, 3}), Tensor::from_vector(wv, {4, 2, 2, 2}),
                    Tensor::from_vector({0.5f, -1.f, 2.f, 0.f}, {4}), 2, 1, 2);
  CHECK(y.shape() == Shape{1, 4, 2, 2});
  CHECK(y.to_vector() == std::vector<float>{-2.5, -0.5, -0.5, 7.5, 4, 2, 2, 7, 7, 8, 5, 5, -3, 6, 2, -4});
}

TEST_CASE("conv2d creates its primitives once per shape") {
  using engine::cpu::dnnl_primitives_created;
  Rng rng(15);
  // A shape no other test uses; stride 2, so that no CPU runs it with our Winograd, which makes no primitives.
  ConvCase k{3, 16, 13, 11, 16, 3, 3, 2, 1, 1, true};
  auto [x, w, b] = random_inputs(k, rng);
  x.requires_grad_();
  w.requires_grad_();
  b.requires_grad_();
  Tensor gy = rand_uniform({k.n, k.o, k.oh(), k.ow()}, -1, 1, rng);
  auto step = [&] { sum_all(mul(conv2d(x, w, b, 2, 1, 1), gy)).backward(); };

  uint64_t before = dnnl_primitives_created();
  { NoGradGuard g; conv2d(x, w, b, 2, 1, 1); }
  uint64_t after_forward = dnnl_primitives_created();
  CHECK(after_forward > before);
  { NoGradGuard g; conv2d(x, w, b, 2, 1, 1); }
  CHECK(dnnl_primitives_created() == after_forward);

  step();  // the first backward creates the backward primitives
  CHECK(dnnl_primitives_created() > after_forward);
  uint64_t warm = dnnl_primitives_created();
  uint64_t system_allocs = alloc_stats().system_allocs;
  step();
  CHECK(dnnl_primitives_created() == warm);
  CHECK(alloc_stats().system_allocs == system_allocs);  // nor any memory beyond the caching allocator's

  Tensor x2 = rand_uniform({k.n, k.c, k.h + 1, k.w}, -1, 1, rng);  // a new shape
  { NoGradGuard g; conv2d(x2, w, b, 2, 1, 1); }
  CHECK(dnnl_primitives_created() > warm);
}

TEST_CASE("conv2d repeats its results bit for bit") {
  Rng rng(16);
  for (ConvCase k : {ConvCase{4, 32, 12, 12, 32, 3, 3, 1, 1, 1, true}, ConvCase{4, 32, 12, 12, 32, 1, 1, 1, 0, 1, true}}) {
    auto [x, w, b] = random_inputs(k, rng);
    x.requires_grad_();
    w.requires_grad_();
    b.requires_grad_();
    Tensor gy = rand_uniform({k.n, k.o, k.oh(), k.ow()}, -1, 1, rng);
    auto run = [&] {
      x.set_grad(Tensor());
      w.set_grad(Tensor());
      b.set_grad(Tensor());
      Tensor y = conv2d(x, w, b, k.stride, k.padding(), k.groups);
      sum_all(mul(y, gy)).backward();
      return std::vector<std::vector<float>>{y.to_vector(), x.grad().to_vector(), w.grad().to_vector(),
                                             b.grad().to_vector()};
    };
    auto first = run(), second = run();
    for (size_t i = 0; i < first.size(); i++) {
      REQUIRE(first[i].size() == second[i].size());
      CHECK_MESSAGE(std::memcmp(first[i].data(), second[i].data(), first[i].size() * sizeof(float)) == 0,
                    "output " << i << " of " << k.str());
    }
  }
}

// --- winograd.cpp: our F(2x2, 3x3), called directly so that it runs on every CPU -------------------------

// [N, C, H, W] values of a buffer in nChw8c.
static std::vector<float> unblock8(const std::vector<float>& blocked, int64_t n, int64_t c, int64_t h, int64_t w) {
  std::vector<float> plain(blocked.size());
  for (int64_t i = 0; i < n; i++)
    for (int64_t ch = 0; ch < c; ch++)
      for (int64_t p = 0; p < h * w; p++) plain[((i * c + ch) * h * w) + p] = blocked[((i * (c / 8) + ch / 8) * h * w + p) * 8 + ch % 8];
  return plain;
}

TEST_CASE("Winograd F(2x2, 3x3) and F(4x4, 3x3): forward and gradients against plain loops" *
          skip_unless(cpu::winograd_available(), "this build has no AVX2 and FMA (-march): no Winograd kernels of ours")) {
  Rng rng(17);
  for (ConvCase k : {ConvCase{2, 8, 7, 5, 24, 3, 3, 1, 1, 1, true},     // odd sizes: partial tiles; 16 + 8 outputs
                     ConvCase{1, 16, 1, 1, 8, 3, 3, 1, 1, 1, false},    // one pixel
                     ConvCase{3, 64, 9, 10, 40, 3, 3, 1, 1, 1, true},   // two or more blocks of tiles
                     ConvCase{1, 24, 4, 4, 16, 3, 3, 1, 1, 1, false},   // one 4x4 tile
                     ConvCase{2, 16, 2, 3, 16, 3, 3, 1, 1, 1, true},    // a plane smaller than a 4x4 tile
                     ConvCase{1, 16, 6, 6, 48, 3, 3, 1, 1, 1, true},    // one block of tiles: threads split the
                     ConvCase{1, 8, 5, 7, 40, 3, 3, 1, 1, 1, false}}) { //   outputs, 32 + 16 and 16 + 24
    ConvShape s{k.n, k.c, k.h, k.w, k.o, 3, 3, k.h, k.w, 1, 1, 1, 1, k.bias, 8, 8};
    REQUIRE(cpu::winograd_fits(s));
    auto [x, w, b] = random_inputs(k, rng);
    Tensor gy = rand_uniform({k.n, k.o, k.h, k.w}, -1, 1, rng);
    const RefGrads ref = ref_conv_backward(k, x, w, gy);
    for (cpu::WinogradTile tile : {cpu::WinogradTile::f2, cpu::WinogradTile::f4}) {
      const std::string what = (tile == cpu::WinogradTile::f2 ? "F(2x2) " : "F(4x4) ") + k.str();
      std::vector<float> y(k.n * k.o * k.h * k.w), gx(x.numel()), gw(w.numel()), gb(k.o);
      cpu::winograd_forward(s, to_layout(x, 8).storage_f32(), w.f32(), k.bias ? b.f32() : nullptr, y.data(), tile);
      std::vector<double> ref_y = ref_conv_forward(k, x, w, b);
      check_close(unblock8(y, k.n, k.o, k.h, k.w), ref_y, 1e-4, 1e-4, "forward " + what);
      cpu::winograd_forward(s, to_layout(x, 8).storage_f32(), w.f32(), k.bias ? b.f32() : nullptr, y.data(), tile,
                            nullptr, true);
      for (double& v : ref_y) v = std::max(v, 0.0);
      check_close(unblock8(y, k.n, k.o, k.h, k.w), ref_y, 1e-4, 1e-4, "forward with the ReLU " + what);
      cpu::winograd_backward_data(s, to_layout(gy, 8).storage_f32(), w.f32(), gx.data(), tile);
      check_close(unblock8(gx, k.n, k.c, k.h, k.w), ref.gx, 1e-4, 1e-4, "backward data " + what);
      cpu::winograd_backward_weight(s, to_layout(x, 8).storage_f32(), to_layout(gy, 8).storage_f32(), gw.data(), gb.data(), tile);
      check_close(gw, ref.gw, 1e-4, 1e-4, "backward weight " + what);
      if (k.bias) check_close(gb, ref.gb, 1e-4, 1e-4, "bias " + what);
    }
  }
}

TEST_CASE("conv2d rejects shapes that do not fit") {
  Tensor x = Tensor::zeros({2, 6, 5, 5});
  auto throws = [](auto f, const char* what) { CHECK_THROWS_WITH_AS(f(), doctest::Contains(what), std::runtime_error); };
  throws([&] { conv2d(x, Tensor::zeros({4, 2, 3, 3}), Tensor(), 1, 1, 4); }, "not divisible by groups");
  throws([&] { conv2d(x, Tensor::zeros({6, 2, 3, 3}), Tensor(), 1, 1, 4); }, "not divisible by groups");
  throws([&] { conv2d(x, Tensor::zeros({6, 3, 3, 3}), Tensor(), 1, 1, 3); }, "weight must be [O, C/groups, kh, kw]");
  throws([&] { conv2d(x, Tensor::zeros({6, 6, 3}), Tensor(), 1, 1, 1); }, "weight must be [O, C/groups, kh, kw]");
  throws([&] { conv2d(Tensor::zeros({6, 5, 5}), Tensor::zeros({6, 6, 3, 3}), Tensor(), 1, 1, 1); }, "x must be [N, C, H, W]");
  throws([&] { conv2d(x, Tensor::zeros({4, 6, 3, 3}), Tensor::zeros({6}), 1, 1, 1); }, "bias must be [4]");
  throws([&] { conv2d(x, Tensor::zeros({4, 6, 7, 7}), Tensor(), 1, 0, 1); }, "kernel larger than the padded input");
  throws([&] { conv2d(x, Tensor::zeros({4, 6, 3, 3}), Tensor(), 0, 1, 1); }, "stride 0");
}
