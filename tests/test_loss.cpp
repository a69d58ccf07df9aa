// cross_entropy (with label smoothing) against a double-precision log-softmax, its gradient, label checks,
// PyTorch's numbers from tests/reference/ops_bn_ce.safetensors, and topk_correct on hand-made logits.
#include <cmath>
#include <limits>

#include "engine/ops.h"
#include "engine/random.h"
#include "engine/safetensors.h"
#include "tests/gradcheck.h"

using namespace engine;
using testing_util::check_close;
using testing_util::check_gradients;

namespace {

Tensor labels_of(const std::vector<int32_t>& v) {
  Tensor t = Tensor::empty({(int64_t)v.size()}, DType::i32);
  std::copy(v.begin(), v.end(), t.data<int32_t>());
  return t;
}

Tensor random_labels(int64_t n, int64_t k, Rng& rng) {
  std::vector<int32_t> v(n);
  for (auto& y : v) y = (int32_t)rng.below(k);
  return labels_of(v);
}

struct RefCe {
  double loss;
  std::vector<double> glogits;  // d loss / d logits
};

// loss = mean_i -Σ_k target[i, k] log p[i, k] with target = (1 - ε) onehot + ε / K; glogits = (p - target) / N.
RefCe ref_cross_entropy(const Tensor& logits, const Tensor& labels, double eps) {
  const int64_t n = logits.size(0), k = logits.size(1);
  const float* l = logits.f32();
  RefCe r{0, std::vector<double>(n * k)};
  for (int64_t i = 0; i < n; i++) {
    double top = -INFINITY, sum = 0;
    for (int64_t j = 0; j < k; j++) top = std::max(top, (double)l[i * k + j]);
    for (int64_t j = 0; j < k; j++) sum += std::exp(l[i * k + j] - top);
    const double lse = top + std::log(sum);
    for (int64_t j = 0; j < k; j++) {
      double target = (j == labels.data<int32_t>()[i] ? 1 - eps : 0) + eps / k;
      double logp = l[i * k + j] - lse;
      r.loss -= target * logp / n;
      r.glogits[i * k + j] = (std::exp(logp) - target) / n;
    }
  }
  return r;
}

}  // namespace

TEST_CASE("cross_entropy with label smoothing against a double log-softmax, forward and backward") {
  Rng rng(21);
  struct Case {
    int64_t n, k;
    float offset, spread;  // logits uniform in offset ± spread
    float eps;
  };
  for (Case c : std::vector<Case>{{4, 10, 0, 3, 0},
                                  {7, 3, 1, 2, 0.1f},
                                  {1, 1, 0, 1, 0.1f},         // K = 1: zero loss and gradient
                                  {3, 1000, 500, 60, 0.2f},   // exp(logit) would overflow without the shift
                                  {2, 5, 0, 1, 1.f},          // uniform target
                                  {33, 1100, 0, 5, 0.1f}}) {  // large enough to run threaded
    Tensor logits = rand_uniform({c.n, c.k}, c.offset - c.spread, c.offset + c.spread, rng).requires_grad_();
    Tensor labels = random_labels(c.n, c.k, rng);
    RefCe r = ref_cross_entropy(logits, labels, c.eps);
    Tensor loss = cross_entropy(logits, labels, c.eps);
    INFO("N " << c.n << " K " << c.k << " eps " << c.eps);
    CHECK(loss.shape() == Shape{});
    check_close(loss.to_vector(), std::vector<double>{r.loss}, 1e-6, 1e-6, "loss");
    mul_scalar(loss, 2.5f).backward();
    for (double& g : r.glogits) g *= 2.5;
    check_close(logits.grad().to_vector(), r.glogits, 1e-5, 1e-7, "glogits");
  }
}

TEST_CASE("cross_entropy gradient check") {
  Rng rng(22);
  testing_util::GradCheck opt;  // gradients are ~1/N: check them to 1e-4, far below the smoothing's ε/(N K)
  opt.tolerance = 1e-4;
  for (float eps : {0.f, 0.3f}) {
    for (auto [n, k] : std::vector<std::pair<int64_t, int64_t>>{{3, 7}, {2, 2}, {5, 4}}) {
      Tensor labels = random_labels(n, k, rng);
      INFO("N " << n << " K " << k << " eps " << eps);
      check_gradients([&](auto& in) { return cross_entropy(in[0], labels, eps); },
                      {rand_uniform({n, k}, -2, 2, rng)}, opt);
    }
  }
}

TEST_CASE("cross_entropy and topk_correct reject bad labels with the row and value") {
  Tensor logits = Tensor::zeros({3, 5});
  CHECK_THROWS_WITH_AS(cross_entropy(logits, labels_of({0, 4, 5})),
                       doctest::Contains("label 5 of row 2 is outside [0, 5)"), std::runtime_error);
  CHECK_THROWS_WITH_AS(cross_entropy(logits, labels_of({0, -1, 2})),
                       doctest::Contains("label -1 of row 1 is outside [0, 5)"), std::runtime_error);
  CHECK_THROWS_WITH_AS(topk_correct(logits, labels_of({7, 0, 0}), 1),
                       doctest::Contains("label 7 of row 0 is outside [0, 5)"), std::runtime_error);
  CHECK_THROWS_WITH_AS(cross_entropy(logits, Tensor::zeros({3})), doctest::Contains("expects labels i32 [3]"),
                       std::runtime_error);
  CHECK_THROWS_WITH_AS(cross_entropy(logits, labels_of({0, 1})), doctest::Contains("expects labels i32 [3]"),
                       std::runtime_error);
  CHECK_THROWS_WITH_AS(cross_entropy(Tensor::zeros({3, 5, 1}), labels_of({0, 1, 2})),
                       doctest::Contains("expects logits f32 [N, K]"), std::runtime_error);
  CHECK_THROWS_WITH_AS(cross_entropy(logits, labels_of({0, 1, 2}), 1.5f), doctest::Contains("label_smoothing"),
                       std::runtime_error);
  CHECK_THROWS_WITH_AS(topk_correct(logits, labels_of({0, 1, 2}), 6), doctest::Contains("k = 6 for 5 classes"),
                       std::runtime_error);
  CHECK_THROWS_WITH_AS(topk_correct(logits, labels_of({0, 1, 2}), 0), doctest::Contains("k = 0"),
                       std::runtime_error);
}

// tests/reference/ops_bn_ce.safetensors is written by `/usr/bin/python3 tests/reference/make_op_refs.py`.
TEST_CASE("cross_entropy matches PyTorch, with and without label smoothing") {
  const std::string path = "tests/reference/ops_bn_ce.safetensors";
  const st::File f = st::load(path);
  auto get = [&](const std::string& name, Shape shape) {
    return Tensor::from_vector(st::require(f, "ce." + name, st::DType::F32, shape.vec(), path).to_vector<float>(),
                               shape);
  };
  Tensor logits = get("logits", {6, 5}).requires_grad_();
  Tensor labels = labels_of(st::require(f, "ce.labels", st::DType::I32, {6}, path).to_vector<int32_t>());
  Tensor loss = cross_entropy(logits, labels, 0.1f);
  mul_scalar(loss, 2.5f).backward();
  check_close(loss.to_vector(), get("loss", {}).to_vector(), 1e-6, 1e-7, "loss");
  check_close(logits.grad().to_vector(), get("glogits", {6, 5}).to_vector(), 1e-5, 1e-7, "glogits");
  check_close(cross_entropy(logits, labels).to_vector(), get("loss_plain", {}).to_vector(), 1e-6, 1e-7, "loss_plain");
}

TEST_CASE("topk_correct counts a label among the k largest logits, ties in the label's favour") {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  Tensor logits = Tensor::from_vector({0.1f, 0.9f, 0.3f, 0.2f, 0.0f, -1.f,  // label 1: the largest
                                       0.1f, 0.9f, 0.3f, 0.2f, 0.0f, -1.f,  // label 2: second
                                       1.f,  1.f,  1.f,  1.f,  1.f,  1.f,   // label 4: all tied
                                       5.f,  4.f,  3.f,  2.f,  1.f,  0.f,   // label 5: sixth
                                       5.f,  4.f,  3.f,  2.f,  1.f,  0.f,   // label 4: fifth
                                       0.f,  2.f,  2.f,  1.f,  0.f,  0.f,   // label 2: tied first
                                       0.f,  1.f,  nan,  1.f,  0.f,  0.f},  // label 2: NaN never counts
                                      {7, 6});
  Tensor labels = labels_of({1, 2, 4, 5, 4, 2, 2});
  CHECK(topk_correct(logits, labels, 1) == 3);  // rows 0, 2, 5
  CHECK(topk_correct(logits, labels, 2) == 4);  // and row 1
  CHECK(topk_correct(logits, labels, 5) == 5);  // and row 4
  CHECK(topk_correct(logits, labels, 6) == 6);  // every row but the NaN one
  CHECK(topk_correct(Tensor::from_vector({2.f, 1.f, 1.f, 2.f}, {2, 2}), labels_of({0, 0}), 1) == 1);
}

// T² · (1/N) Σ_i Σ_j p_t (log p_t − log p_s), p = softmax(logits / T), in double; and d / d student.
static RefCe ref_distillation(const Tensor& student, const Tensor& teacher, double t) {
  const int64_t n = student.size(0), k = student.size(1);
  auto log_softmax = [&](const float* row) {
    std::vector<double> z(k);
    double top = -INFINITY, sum = 0;
    for (int64_t j = 0; j < k; j++) top = std::max(top, row[j] / t);
    for (int64_t j = 0; j < k; j++) sum += std::exp(row[j] / t - top);
    for (int64_t j = 0; j < k; j++) z[j] = row[j] / t - top - std::log(sum);
    return z;
  };
  RefCe r{0, std::vector<double>(n * k)};
  for (int64_t i = 0; i < n; i++) {
    const std::vector<double> ls = log_softmax(student.f32() + i * k), lt = log_softmax(teacher.f32() + i * k);
    for (int64_t j = 0; j < k; j++) {
      r.loss += t * t * std::exp(lt[j]) * (lt[j] - ls[j]) / n;
      r.glogits[i * k + j] = t * (std::exp(ls[j]) - std::exp(lt[j])) / n;
    }
  }
  return r;
}

TEST_CASE("distillation_loss against a double KL of softened softmaxes, forward and backward; the teacher gets none") {
  Rng rng(23);
  for (auto [n, k, t] : std::vector<std::tuple<int64_t, int64_t, float>>{{4, 10, 1}, {7, 3, 4}, {3, 1000, 2}, {33, 1100, 8}}) {
    INFO("N " << n << " K " << k << " T " << t);
    Tensor student = rand_uniform({n, k}, -6, 6, rng).requires_grad_();
    Tensor teacher = rand_uniform({n, k}, -6, 6, rng).requires_grad_();
    const RefCe r = ref_distillation(student, teacher, t);
    Tensor loss = distillation_loss(student, teacher, t);
    CHECK(loss.shape() == Shape{});
    check_close(loss.to_vector(), std::vector<double>{r.loss}, 1e-5, 1e-6, "loss");
    mul_scalar(loss, 1.5f).backward();
    std::vector<double> g = r.glogits;
    for (double& v : g) v *= 1.5;
    check_close(student.grad().to_vector(), g, 1e-5, 1e-7, "gstudent");
    CHECK_FALSE(teacher.grad().defined());
  }
  // the same logits: no loss, no gradient
  Tensor same = rand_uniform({5, 7}, -3, 3, rng).requires_grad_();
  Tensor zero = distillation_loss(same, same.detach(), 3);
  CHECK(std::fabs(zero.item()) < 1e-6f);
}

TEST_CASE("distillation_loss gradient check, and bad shapes or temperatures named") {
  Rng rng(24);
  testing_util::GradCheck opt;
  opt.tolerance = 1e-4;
  for (float t : {1.f, 3.f}) {
    const Tensor teacher = rand_uniform({3, 5}, -2, 2, rng);
    INFO("T " << t);
    check_gradients([&](auto& in) { return distillation_loss(in[0], teacher, t); }, {rand_uniform({3, 5}, -2, 2, rng)}, opt);
  }
  const Tensor a = rand_uniform({2, 5}, -1, 1, rng), b = rand_uniform({2, 4}, -1, 1, rng);
  CHECK_THROWS_WITH(distillation_loss(a, b, 2), doctest::Contains("teacher logits f32[2, 4]"));
  CHECK_THROWS_WITH(distillation_loss(a, a, 0), doctest::Contains("temperature 0.000000, expected > 0"));
  CHECK_THROWS_WITH(distillation_loss(a, a, NAN), doctest::Contains("expected > 0"));
}
