// batch_norm2d against plain double loops (training and eval forward, running statistics, both backwards),
// finite-difference gradient checks, and PyTorch's numbers from tests/reference/ops_bn_ce.safetensors.
#include <cmath>

#include "engine/autograd.h"
#include "engine/kernels.h"
#include "engine/ops.h"
#include "engine/random.h"
#include "engine/safetensors.h"
#include "tests/gradcheck.h"

using namespace engine;
using testing_util::check_close;
using testing_util::check_gradients;

namespace {

// x [N, C, H, W] viewed as [N, C, HW].
struct Dims {
  int64_t n, c, hw;
  explicit Dims(const Tensor& x) : n(x.size(0)), c(x.size(1)), hw(x.size(2) * x.size(3)) {}
  int64_t at(int64_t i, int64_t ch, int64_t j) const { return (i * c + ch) * hw + j; }
};

// Two-pass batch mean and biased variance per channel, in double.
void ref_batch_stats(const Tensor& x, std::vector<double>& mean, std::vector<double>& var) {
  Dims d(x);
  const float* p = x.f32();
  const double m = (double)(d.n * d.hw);
  mean.assign(d.c, 0.0);
  var.assign(d.c, 0.0);
  for (int64_t c = 0; c < d.c; c++) {
    for (int64_t i = 0; i < d.n; i++)
      for (int64_t j = 0; j < d.hw; j++) mean[c] += p[d.at(i, c, j)];
    mean[c] /= m;
    for (int64_t i = 0; i < d.n; i++)
      for (int64_t j = 0; j < d.hw; j++) var[c] += (p[d.at(i, c, j)] - mean[c]) * (p[d.at(i, c, j)] - mean[c]);
    var[c] /= m;
  }
}

// y = (x - mean[c]) / sqrt(var[c] + eps) * gamma[c] + beta[c]
std::vector<double> ref_normalize(const Tensor& x, const std::vector<double>& mean, const std::vector<double>& var,
                                  const Tensor& gamma, const Tensor& beta, double eps) {
  Dims d(x);
  std::vector<double> y(x.numel());
  for (int64_t i = 0; i < d.n; i++)
    for (int64_t c = 0; c < d.c; c++)
      for (int64_t j = 0; j < d.hw; j++) {
        int64_t k = d.at(i, c, j);
        y[k] = (x.f32()[k] - mean[c]) / std::sqrt(var[c] + eps) * gamma.f32()[c] + beta.f32()[c];
      }
  return y;
}

std::vector<double> as_double(const Tensor& t) {
  std::vector<float> v = t.to_vector();
  return std::vector<double>(v.begin(), v.end());
}

struct RefGrads {
  std::vector<double> gx, ggamma, gbeta;
};

// The training-mode backward by the chain rule through xhat, var and mean, one step at a time.
RefGrads ref_train_backward(const Tensor& x, const Tensor& gamma, const Tensor& gy, double eps) {
  Dims d(x);
  std::vector<double> mean, var;
  ref_batch_stats(x, mean, var);
  const double m = (double)(d.n * d.hw);
  const float *px = x.f32(), *pg = gy.f32();
  RefGrads r{std::vector<double>(x.numel()), std::vector<double>(d.c), std::vector<double>(d.c)};
  for (int64_t c = 0; c < d.c; c++) {
    const double istd = 1 / std::sqrt(var[c] + eps), g = gamma.f32()[c];
    double dvar = 0, dmean = 0, sum_xmu = 0;
    for (int64_t i = 0; i < d.n; i++)
      for (int64_t j = 0; j < d.hw; j++) {
        int64_t k = d.at(i, c, j);
        double xmu = px[k] - mean[c], dxhat = pg[k] * g;
        r.gbeta[c] += pg[k];
        r.ggamma[c] += pg[k] * xmu * istd;
        dvar += dxhat * xmu * -0.5 * istd * istd * istd;  // d var: xhat = xmu (var + eps)^-1/2
        dmean -= dxhat * istd;
        sum_xmu += xmu;
      }
    dmean += dvar * -2 * sum_xmu / m;  // var depends on mean too (sum_xmu is ~0)
    for (int64_t i = 0; i < d.n; i++)
      for (int64_t j = 0; j < d.hw; j++) {
        int64_t k = d.at(i, c, j);
        r.gx[k] = pg[k] * g * istd + dvar * 2 * (px[k] - mean[c]) / m + dmean / m;
      }
  }
  return r;
}

// The eval-mode backward: the running statistics are constants.
RefGrads ref_eval_backward(const Tensor& x, const Tensor& gamma, const Tensor& rm, const Tensor& rv,
                           const Tensor& gy, double eps) {
  Dims d(x);
  RefGrads r{std::vector<double>(x.numel()), std::vector<double>(d.c), std::vector<double>(d.c)};
  for (int64_t c = 0; c < d.c; c++) {
    const double istd = 1 / std::sqrt((double)rv.f32()[c] + eps);
    for (int64_t i = 0; i < d.n; i++)
      for (int64_t j = 0; j < d.hw; j++) {
        int64_t k = d.at(i, c, j);
        double g = gy.f32()[k];
        r.gx[k] = g * gamma.f32()[c] * istd;
        r.ggamma[c] += g * (x.f32()[k] - rm.f32()[c]) * istd;
        r.gbeta[c] += g;
      }
  }
  return r;
}

struct Case {
  Shape shape;
  float mean, stddev;  // of x
  const char* what;
};

const std::vector<Case> cases = {
    {{2, 3, 4, 5}, 0.f, 1.f, "small"},
    {{1, 2, 3, 3}, 0.5f, 2.f, "batch 1"},
    {{3, 1, 5, 7}, -1.f, 0.5f, "C = 1"},
    {{5, 4, 1, 1}, 0.f, 1.f, "H = W = 1"},
    {{3, 5, 7, 3}, 2.f, 3.f, "odd sizes"},
    {{4, 3, 6, 6}, 1000.f, 1.f, "mean 1000, std 1"},
    {{4, 8, 32, 33}, 0.f, 1.f, "large enough to run threaded"},
};

struct Params {
  Tensor x, gamma, beta, rm, rv, gy;
};

// Running statistics near the input's (so that eval mode sees values of a sensible size).
Params random_params(const Case& k, Rng& rng) {
  int64_t c = k.shape[1];
  return {rand_normal(k.shape, k.mean, k.stddev, rng),
          rand_uniform({c}, 0.5f, 1.5f, rng),
          rand_uniform({c}, -0.5f, 0.5f, rng),
          rand_uniform({c}, k.mean - 0.5f * k.stddev, k.mean + 0.5f * k.stddev, rng),
          rand_uniform({c}, 0.5f * k.stddev * k.stddev, 2.f * k.stddev * k.stddev, rng),
          rand_uniform(k.shape, -1.f, 1.f, rng)};
}

// x's absolute error budget: float32 rounding of x (and of the batch mean) relative to the spread.
double atol_for(const Case& k) { return 1e-7 * (1 + std::fabs(k.mean) / k.stddev); }

}  // namespace

TEST_CASE("batch_norm2d training: output, batch statistics and running statistics against double loops") {
  Rng rng(11);
  for (const Case& k : cases) {
    for (float momentum : {0.1f, 0.3f}) {
      Params p = random_params(k, rng);
      Tensor rm = p.rm.clone(), rv = p.rv.clone();
      BatchStats stats;
      Tensor y = batch_norm2d(p.x, p.gamma, p.beta, rm, rv, true, momentum, 1e-5f, &stats);
      std::vector<double> mean, var;
      ref_batch_stats(p.x, mean, var);
      std::string what = std::string(k.what) + " " + k.shape.str() + " momentum " + std::to_string(momentum);
      check_close(y.to_vector(), ref_normalize(p.x, mean, var, p.gamma, p.beta, 1e-5), 1e-5, 5 * atol_for(k),
                  "y " + what);
      REQUIRE(stats.mean.shape() == Shape{k.shape[1]});
      check_close(stats.mean.to_vector(), mean, 1e-6, 1e-6, "batch mean " + what);
      check_close(stats.var.to_vector(), var, 1e-5, 1e-7, "batch var " + what);
      // running = (1 - m) running + m batch, the variance unbiased by M / (M - 1)
      const double count = (double)(k.shape[0] * k.shape[2] * k.shape[3]);
      std::vector<double> want_rm, want_rv;
      for (int64_t c = 0; c < k.shape[1]; c++) {
        want_rm.push_back((1 - momentum) * p.rm.f32()[c] + (double)momentum * mean[c]);
        want_rv.push_back((1 - momentum) * p.rv.f32()[c] + (double)momentum * var[c] * count / (count - 1));
      }
      check_close(rm.to_vector(), want_rm, 1e-6, 1e-7, "running mean " + what);
      check_close(rv.to_vector(), want_rv, 1e-6, 1e-7, "running var " + what);
    }
  }
}

TEST_CASE("batch_norm2d eval: uses the running statistics and leaves them alone") {
  Rng rng(12);
  for (const Case& k : cases) {
    Params p = random_params(k, rng);
    Tensor rm = p.rm.clone(), rv = p.rv.clone();
    BatchStats stats{Tensor::zeros({1}), Tensor::zeros({1})};
    Tensor y = batch_norm2d(p.x, p.gamma, p.beta, rm, rv, false, 0.1f, 1e-5f, &stats);
    check_close(y.to_vector(), ref_normalize(p.x, as_double(p.rm), as_double(p.rv), p.gamma, p.beta, 1e-5), 1e-5,
                5 * atol_for(k), std::string("eval y ") + k.what);
    CHECK(rm.to_vector() == p.rm.to_vector());
    CHECK(rv.to_vector() == p.rv.to_vector());
    CHECK_FALSE(stats.mean.defined());
    CHECK_FALSE(stats.var.defined());
  }
}

TEST_CASE("batch_norm2d backward (training and eval) against the chain rule in double") {
  Rng rng(13);
  for (const Case& k : cases) {
    for (bool training : {true, false}) {
      Params p = random_params(k, rng);
      for (Tensor* t : {&p.x, &p.gamma, &p.beta}) t->requires_grad_();
      Tensor y = batch_norm2d(p.x, p.gamma, p.beta, p.rm.clone(), p.rv.clone(), training);
      sum_all(mul(y, p.gy)).backward();
      RefGrads r = training ? ref_train_backward(p.x, p.gamma, p.gy, 1e-5)
                            : ref_eval_backward(p.x, p.gamma, p.rm, p.rv, p.gy, 1e-5);
      std::string what = std::string(training ? "train " : "eval ") + k.what + " " + k.shape.str();
      // Sums over M values: their absolute error grows like sqrt(M) float roundings.
      const double m = (double)(k.shape[0] * k.shape[2] * k.shape[3]);
      check_close(p.x.grad().to_vector(), r.gx, 2e-5, 4 * atol_for(k), "gx " + what);
      check_close(p.gamma.grad().to_vector(), r.ggamma, 1e-5, 1e-6 * std::sqrt(m) * (1 + std::fabs(k.mean) / k.stddev),
                  "ggamma " + what);
      check_close(p.beta.grad().to_vector(), r.gbeta, 1e-5, 1e-6 * std::sqrt(m), "gbeta " + what);
    }
  }
}

TEST_CASE("batch_norm2d backward computes only the gradients asked for") {
  Rng rng(14);
  Params p = random_params(cases[0], rng);
  for (bool training : {true, false}) {
    p.x.requires_grad_(false).set_grad(Tensor());
    p.gamma.requires_grad_(true).set_grad(Tensor());
    p.beta.requires_grad_(false).set_grad(Tensor());
    sum_all(mul(batch_norm2d(p.x, p.gamma, p.beta, p.rm.clone(), p.rv.clone(), training), p.gy)).backward();
    RefGrads r = training ? ref_train_backward(p.x, p.gamma, p.gy, 1e-5)
                          : ref_eval_backward(p.x, p.gamma, p.rm, p.rv, p.gy, 1e-5);
    CHECK_FALSE(p.x.grad().defined());
    CHECK_FALSE(p.beta.grad().defined());
    check_close(p.gamma.grad().to_vector(), r.ggamma, 1e-5, 1e-6, "ggamma alone");

    p.x.requires_grad_(true);
    p.gamma.requires_grad_(false).set_grad(Tensor());
    sum_all(mul(batch_norm2d(p.x, p.gamma, p.beta, p.rm.clone(), p.rv.clone(), training), p.gy)).backward();
    CHECK_FALSE(p.gamma.grad().defined());
    check_close(p.x.grad().to_vector(), r.gx, 2e-5, 1e-6, "gx alone");
  }
  NoGradGuard no_grad;
  CHECK_FALSE(batch_norm2d(p.x, p.gamma, p.beta, p.rm.clone(), p.rv.clone(), true).requires_grad());
}

TEST_CASE("batch_norm2d gradient checks through the op") {
  Rng rng(15);
  // Float32 forwards: step 1e-2 keeps the loss's rounding noise (~1e-6) small against 2h, and the truncation
  // error at that step is small too (the largest error seen is below 5e-5, the tolerance 5e-4).
  testing_util::GradCheck opt;
  opt.step = 1e-2;
  opt.tolerance = 5e-4;
  for (Shape shape : {Shape{2, 3, 3, 4}, Shape{1, 2, 3, 3}, Shape{4, 1, 2, 3}, Shape{3, 2, 1, 1}}) {
    Params p = random_params({shape, 0.5f, 1.f, ""}, rng);
    Tensor rm = p.rm.clone(), rv = p.rv.clone();
    INFO("shape " << shape.str());
    check_gradients([&](auto& in) { return batch_norm2d(in[0], in[1], in[2], rm, rv, true); },
                    {p.x, p.gamma, p.beta}, opt);
    check_gradients([&](auto& in) { return batch_norm2d(in[0], in[1], in[2], rm, rv, false); },
                    {p.x, p.gamma, p.beta}, opt);
  }
}

TEST_CASE("batch_norm2d rejects bad shapes with clear messages") {
  Tensor c3 = Tensor::full({3}, 1.f);
  CHECK_THROWS_WITH_AS(batch_norm2d(Tensor::zeros({2, 3, 4}), c3, c3, c3, c3, true),
                       doctest::Contains("expects x f32 [N, C, H, W]"), std::runtime_error);
  CHECK_THROWS_WITH_AS(batch_norm2d(Tensor::zeros({2, 3, 4, 4}), Tensor::full({4}, 1.f), c3, c3, c3, true),
                       doctest::Contains("gamma must be f32 [3]"), std::runtime_error);
  CHECK_THROWS_WITH_AS(batch_norm2d(Tensor::zeros({2, 3, 4, 4}), c3, c3, Tensor(), c3, false),
                       doctest::Contains("running_mean is undefined"), std::runtime_error);
  CHECK_THROWS_WITH_AS(batch_norm2d(Tensor::zeros({1, 3, 1, 1}), c3, c3, c3, c3, true),
                       doctest::Contains("more than one value per channel"), std::runtime_error);
  CHECK(batch_norm2d(Tensor::zeros({1, 3, 1, 1}), c3, c3, c3, c3, false).shape() == Shape{1, 3, 1, 1});
}

// tests/reference/ops_bn_ce.safetensors is written by `/usr/bin/python3 tests/reference/make_op_refs.py`.
TEST_CASE("batch_norm2d matches PyTorch: training forward and backward, running statistics, eval") {
  const std::string path = "tests/reference/ops_bn_ce.safetensors";
  const st::File f = st::load(path);
  auto get = [&](const std::string& name, Shape shape) {
    return Tensor::from_vector(st::require(f, "bn." + name, st::DType::F32, shape.vec(), path).to_vector<float>(),
                               shape);
  };
  const Shape xs{3, 4, 5, 6}, cs{4};
  Tensor x = get("x", xs), gamma = get("gamma", cs), beta = get("beta", cs), gy = get("gy", xs);
  Tensor rm = get("running_mean", cs), rv = get("running_var", cs);
  for (Tensor* t : {&x, &gamma, &beta}) t->requires_grad_();
  Tensor y = batch_norm2d(x, gamma, beta, rm, rv, true, 0.1f, 1e-5f);
  sum_all(mul(y, gy)).backward();
  check_close(y.to_vector(), get("y", xs).to_vector(), 1e-5, 1e-5, "y");
  check_close(x.grad().to_vector(), get("gx", xs).to_vector(), 2e-5, 2e-6, "gx");
  check_close(gamma.grad().to_vector(), get("ggamma", cs).to_vector(), 1e-5, 1e-5, "ggamma");
  check_close(beta.grad().to_vector(), get("gbeta", cs).to_vector(), 1e-5, 1e-5, "gbeta");
  check_close(rm.to_vector(), get("running_mean_out", cs).to_vector(), 1e-6, 1e-7, "running mean");
  check_close(rv.to_vector(), get("running_var_out", cs).to_vector(), 1e-6, 1e-7, "running var");

  for (Tensor* t : {&x, &gamma, &beta}) t->set_grad(Tensor());
  Tensor y_eval = batch_norm2d(x, gamma, beta, rm, rv, false);
  sum_all(mul(y_eval, gy)).backward();
  check_close(y_eval.to_vector(), get("y_eval", xs).to_vector(), 1e-5, 1e-5, "y eval");
  check_close(x.grad().to_vector(), get("gx_eval", xs).to_vector(), 1e-5, 1e-6, "gx eval");
  check_close(gamma.grad().to_vector(), get("ggamma_eval", cs).to_vector(), 1e-5, 1e-5, "ggamma eval");
  check_close(beta.grad().to_vector(), get("gbeta_eval", cs).to_vector(), 1e-5, 1e-5, "gbeta eval");
}

TEST_CASE("batch_norm2d batch variance stays accurate far from zero (1e4 ± 0.01)") {
  // E[x²] - E[x]² in double would lose ~1e-3 of this variance to cancellation.
  Rng rng(16);
  Params p = random_params({{4, 3, 8, 8}, 1e4f, 1e-2f, ""}, rng);
  BatchStats stats;
  batch_norm2d(p.x, p.gamma, p.beta, p.rm, p.rv, true, 0.1f, 1e-5f, &stats);
  std::vector<double> mean, var;
  ref_batch_stats(p.x, mean, var);
  check_close(stats.mean.to_vector(), mean, 1e-7, 0, "batch mean");
  check_close(stats.var.to_vector(), var, 1e-5, 0, "batch var");
}

// ref_batch_stats as channel_mean_var lays them out: {mean..., var...}.
static std::vector<double> ref_moments(const Tensor& x) {
  std::vector<double> mean, var;
  ref_batch_stats(x, mean, var);
  mean.insert(mean.end(), var.begin(), var.end());
  return mean;
}

TEST_CASE("channel_mean_var: each channel's mean and biased variance against double loops, and their gradients") {
  Rng rng(31);
  for (Shape shape : {Shape{3, 5, 4, 6}, Shape{1, 2, 1, 1}, Shape{4, 3, 7, 5}}) {
    Tensor x = rand_uniform(shape, -1, 3, rng);
    const Tensor m = channel_mean_var(x);
    REQUIRE(m.shape() == Shape{2, shape[1]});
    check_close(m.to_vector(), ref_moments(x), 1e-5, 1e-7, "moments");
    testing_util::check_gradients([](auto& in) { return channel_mean_var(in[0]); }, {x});
  }
  Tensor far = add_scalar(rand_uniform({4, 3, 8, 8}, -0.01f, 0.01f, rng), 1e4f);  // no E[x²] − E[x]² cancellation
  check_close(channel_mean_var(far).to_vector(), ref_moments(far), 1e-5, 1e-12, "moments of 1e4 ± 0.01");
  CHECK_THROWS_WITH(channel_mean_var(Tensor::zeros({3, 4})), doctest::Contains("expects x f32 [N, C, H, W]"));
}

TEST_CASE("channel_mean_var in blocks of 8 and 16: the NCHW moments and gradients") {
  Rng rng(32);
  Tensor x = rand_uniform({3, 32, 3, 5}, -1, 3, rng);
  for (int64_t block : {8, 16}) {
    INFO("block " << block);
    check_close(channel_mean_var(to_layout(x, block)).to_vector(), ref_moments(x), 1e-5, 1e-7, "moments");
    testing_util::check_gradients([block](auto& in) { return channel_mean_var(to_layout(in[0], block)); }, {x});
  }
}

TEST_CASE("channel_mean_var: a backward that drops the mean's term fails the gradient check") {
  Rng rng(34);
  Tensor x = rand_uniform({2, 3, 4, 4}, -1, 3, rng);
  auto wrong = [](const std::vector<Tensor>& in) {
    Tensor y = channel_mean_var(in[0].detach());
    engine::record(y, "wrong_mean_var", {in[0]}, [](const Tensor& out, const Tensor& g) {
      const Tensor& x = out.grad_fn()->inputs[0];
      const engine::BnShape s{x.size(0), x.size(1), x.size(2) * x.size(3), 0};
      Tensor gx = Tensor::empty(x.shape());
      engine::cpu::channel_mean_var_backward(s, x.f32(), out.f32(), nullptr, g.f32() + s.c, gx.f32());
      engine::accumulate_grad(x, gx);
    });
    return y;
  };
  CHECK(testing_util::gradient_errors(wrong, {x})[0] > 0.1);
  CHECK(testing_util::gradient_errors([](auto& in) { return channel_mean_var(in[0]); }, {x})[0] < 1e-2);
}

TEST_CASE("select: row i of x, and the gradient into that row only") {
  Rng rng(35);
  Tensor x = rand_uniform({3, 2, 4}, -1, 1, rng);
  const std::vector<float> v = x.to_vector();
  for (int64_t i = 0; i < 3; i++) {
    const Tensor y = select(x, i);
    REQUIRE(y.shape() == Shape{2, 4});
    CHECK(y.to_vector() == std::vector<float>(v.begin() + 8 * i, v.begin() + 8 * (i + 1)));
    testing_util::check_gradients([i](auto& in) { return select(in[0], i); }, {x});
  }
  CHECK_THROWS_WITH(select(x, 3), doctest::Contains("select of row 3 of"));
}

TEST_CASE("batch_norm2d of a blocked x: the NCHW values and gradients") {
  Rng rng(33);
  Tensor x = rand_uniform({2, 16, 3, 3}, -1, 3, rng), gamma = rand_uniform({16}, 0.5f, 1.5f, rng),
         beta = rand_uniform({16}, -1, 1, rng);
  for (int64_t block : {8, 16})
    for (bool training : {true, false}) {
      INFO("block " << block << (training ? ", training" : ", eval"));
      auto bn = [&](const Tensor& in, const Tensor& g, const Tensor& b) {
        return batch_norm2d(in, g, b, Tensor::zeros({16}), Tensor::full({16}, 1.f), training);
      };
      check_close(bn(to_layout(x, block), gamma, beta).to_vector(), bn(x, gamma, beta).to_vector(), 1e-6, 1e-6, "y");
      testing_util::check_gradients([&](auto& in) { return bn(to_layout(in[0], block), in[1], in[2]); }, {x, gamma, beta});
    }
}
