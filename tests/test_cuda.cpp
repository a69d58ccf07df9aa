// The CUDA backend against the CPU, op by op (ggml's test-backend-ops in its `test` mode): a table of
// cases (op, input shapes, tolerance), each run on the CPU and on CUDA from the same inputs, comparing the
// output, the gradient of every input that requires one (backward of Σ out · w, w random) and every input
// after the run (ops that update one in place: batch norm's running statistics).
// Without a GPU each op family is a doctest case skipped with a SKIPPED line, never passed. The checks that
// run everywhere: asking for CUDA memory without a usable GPU fails at once, with the reason.
#include <cmath>
#include <cstring>
#include <functional>

#include "engine/allocator.h"
#include "engine/cpu/int8.h"
#include "engine/cuda/cuda_backend.h"
#include "engine/ops.h"
#include "engine/optim.h"
#include "engine/random.h"
#include "layers/bn_fold.h"
#include "layers/orepa_merge.h"
#include "layers/quantizer.h"
#include "quant/deploy_export.h"
#include "deploy/integer_model.h"
#include "tests/gradcheck.h"
#include "tests/int8_testing.h"

using namespace engine;
using testing_util::check_close;

namespace {

// The decorator of a test that needs a GPU: without one, skipped and named in a SKIPPED line.
doctest::skip gpu_or_skip(const std::string& family) {
  const std::string why = cuda::built() ? "no CUDA GPU: " : "no CUDA backend in this build: ";
  return skip_unless(cuda::available(), why + family + " on CUDA");
}

// --- the table -------------------------------------------------------------------------------------------

using Inputs = std::vector<Tensor>;

struct OpCase {
  std::string name;
  std::function<Inputs(Rng&)> make;               // inputs on the CPU; those requiring grad are compared
  std::function<Tensor(const Inputs&)> op;
  double rtol = 1e-5, atol = 1e-5;
};

Tensor rand_grad(const Shape& s, float lo, float hi, Rng& rng) {
  return rand_uniform(s, lo, hi, rng).requires_grad_(true);
}

Tensor labels_for(int64_t n, int64_t k, Rng& rng) {
  Tensor y = Tensor::empty({n}, DType::i32);
  for (int64_t i = 0; i < n; i++) y.data<int32_t>()[i] = (int32_t)rng.below(k);
  return y;
}

struct Result {
  std::vector<float> out;
  std::vector<std::vector<float>> grads;  // of the inputs requiring grad, in order
  std::vector<std::vector<float>> after;  // every f32 input after the op
};

// Runs the case on `device` from copies of `inputs` (so in-place updates leave them alone).
Result run_on(Device device, const OpCase& c, const Inputs& inputs) {
  Inputs in;
  for (const Tensor& t : inputs) {
    Tensor u = device == Device::cpu ? t.clone() : t.to(device);
    if (t.requires_grad()) u.requires_grad_(true);
    in.push_back(u);
  }
  Tensor out = c.op(in);
  REQUIRE(out.device() == device);
  Result r;
  r.out = out.to_vector();
  if (out.requires_grad()) {
    Rng rng(99);
    Tensor w = rand_uniform(out.shape(), -1.f, 1.f, rng).to(device);
    sum_all(mul(out, w)).backward();
  }
  for (size_t i = 0; i < in.size(); i++) {
    if (in[i].requires_grad()) {
      REQUIRE_MESSAGE(in[i].grad().defined(), c.name << ": no gradient reached input " << i);
      REQUIRE(in[i].grad().device() == device);
      r.grads.push_back(in[i].grad().to_vector());
    }
    if (in[i].dtype() == DType::f32) r.after.push_back(in[i].to_vector());
  }
  return r;
}

void run_cases(const std::vector<OpCase>& cases) {
  for (const OpCase& c : cases) {
    INFO("case: " << c.name);
    Rng rng(12345);
    Inputs inputs = c.make(rng);
    Result cpu = run_on(Device::cpu, c, inputs), gpu = run_on(Device::cuda, c, inputs);
    check_close(gpu.out, cpu.out, c.rtol, c.atol, c.name + ": output");
    REQUIRE(gpu.grads.size() == cpu.grads.size());
    for (size_t i = 0; i < cpu.grads.size(); i++)
      check_close(gpu.grads[i], cpu.grads[i], c.rtol, c.atol, c.name + ": gradient " + std::to_string(i));
    for (size_t i = 0; i < cpu.after.size(); i++)
      check_close(gpu.after[i], cpu.after[i], c.rtol, c.atol, c.name + ": input " + std::to_string(i) + " after");
  }
}

// Cases of a binary op for each pair of broadcast shapes.
void add_binary_cases(std::vector<OpCase>& cases, const char* name, Tensor (*op)(const Tensor&, const Tensor&)) {
  const std::vector<std::pair<Shape, Shape>> shapes = {
      {{3, 5}, {3, 5}},           {{2, 3, 4, 5}, {1, 3, 1, 1}}, {{6, 4, 3, 3}, {6, 1, 1, 1}},
      {{7}, {2, 3, 7}},           {{1, 5}, {4, 1}},             {{2, 1, 3, 1, 5}, {4, 1}},
      {{}, {3, 2}},               {{64, 1000}, {64, 1000}},     {{33, 17, 65}, {17, 1}},
  };
  for (auto& [a, b] : shapes)
    cases.push_back({std::string(name) + " " + a.str() + " " + b.str(),
                     [a, b](Rng& r) { return Inputs{rand_grad(a, -2, 2, r), rand_grad(b, 0.5f, 2, r)}; },
                     [op](const Inputs& in) { return op(in[0], in[1]); }});
}

OpCase unary_case(const std::string& name, Tensor (*op)(const Tensor&), float lo, float hi, double tol = 1e-6) {
  return {name, [lo, hi](Rng& r) { return Inputs{rand_grad({3, 4, 50}, lo, hi, r)}; },
          [op](const Inputs& in) { return op(in[0]); }, tol, tol};
}

// conv2d of x [n, c, h, w] with w [o, c / groups, kh, kw], padding ph rows and pw columns.
OpCase conv_case(int64_t n, int64_t c, int64_t h, int64_t w, int64_t o, int64_t kh, int64_t kw, int stride, int ph,
                 int pw, int groups, bool bias) {
  std::string name = "conv2d x [" + std::to_string(n) + ", " + std::to_string(c) + ", " + std::to_string(h) + ", " +
                     std::to_string(w) + "] " + std::to_string(o) + " " + std::to_string(kh) + "x" +
                     std::to_string(kw) + " s" + std::to_string(stride) + " p" + std::to_string(ph) + "x" +
                     std::to_string(pw) + " g" + std::to_string(groups) + (bias ? " bias" : "");
  return {name,
          [=](Rng& r) {
            Inputs in{rand_grad({n, c, h, w}, -1, 1, r), rand_grad({o, c / groups, kh, kw}, -0.5f, 0.5f, r)};
            if (bias) in.push_back(rand_grad({o}, -1, 1, r));
            return in;
          },
          [=](const Inputs& in) {
            return conv2d(in[0], in[1], bias ? in[2] : Tensor(), stride, {ph, pw}, groups);
          },
          1e-4, 1e-4};
}

OpCase linear_case(int64_t n, int64_t i, int64_t o, bool bias) {
  return {"linear " + std::to_string(n) + "x" + std::to_string(i) + " -> " + std::to_string(o) + (bias ? " b" : ""),
          [=](Rng& r) {
            Inputs in{rand_grad({n, i}, -1, 1, r), rand_grad({o, i}, -0.5f, 0.5f, r)};
            if (bias) in.push_back(rand_grad({o}, -1, 1, r));
            return in;
          },
          [=](const Inputs& in) { return linear(in[0], in[1], bias ? in[2] : Tensor()); }, 1e-4, 1e-4};
}

// batch_norm2d of x [n, c, h, w] (mean 3, so that the statistics are not trivially centred).
OpCase bn_case(int64_t n, int64_t c, int64_t h, int64_t w, bool training) {
  return {std::string("batch_norm2d ") + (training ? "train " : "eval ") + Shape{n, c, h, w}.str(),
          [=](Rng& r) {
            return Inputs{rand_grad({n, c, h, w}, 2, 4, r), rand_grad({c}, 0.5f, 1.5f, r), rand_grad({c}, -1, 1, r),
                          rand_uniform({c}, -0.5f, 0.5f, r), rand_uniform({c}, 0.5f, 2, r)};
          },
          [=](const Inputs& in) { return batch_norm2d(in[0], in[1], in[2], in[3], in[4], training, 0.1f, 1e-5f); },
          1e-4, 1e-4};
}

// bn_add_relu of 1 to 3 branches x_k [4, 6, 5, 5], each with its BN (gamma, beta, running mean and var),
// with or without the ReLU.
OpCase bn_add_relu_case(int branches, bool training, bool relu) {
  return {"bn_add_relu " + std::to_string(branches) + (training ? " train" : " eval") + (relu ? "" : " no relu"),
          [=](Rng& r) {
            Inputs in;
            for (int k = 0; k < branches; k++) in.push_back(rand_grad({4, 6, 5, 5}, -2, 2, r));
            for (int k = 0; k < branches; k++)
              for (Tensor t : {rand_grad({6}, 0.5f, 1.5f, r), rand_grad({6}, -1, 1, r),
                               rand_uniform({6}, -0.5f, 0.5f, r), rand_uniform({6}, 0.5f, 2, r)})
                in.push_back(t);
            return in;
          },
          [=](const Inputs& in) {
            std::vector<Tensor> xs(in.begin(), in.begin() + branches);
            std::vector<BnParams> bns;
            for (int k = 0; k < branches; k++) {
              const Tensor* p = &in[branches + 4 * k];
              bns.push_back({p[0], p[1], p[2], p[3]});
            }
            return bn_add_relu(xs, bns, training, 0.1f, 1e-5f, relu);
          },
          1e-4, 1e-4};
}

// max_pool2d of x; with ties, x of integers in [-2, 1], whose argmaxes (the first largest, in row-major
// order) route the gradient. Exact: the values are copies and the gradients sums in the same order.
OpCase max_pool_case(const Shape& x, int k, int s, int p, bool ties) {
  return {"max_pool2d " + x.str() + " " + std::to_string(k) + "x" + std::to_string(k) + " s" + std::to_string(s) +
              " p" + std::to_string(p) + (ties ? " ties" : ""),
          [=](Rng& r) {
            Tensor t = rand_uniform(x, -2, 2, r);
            if (ties)
              for (int64_t i = 0; i < t.numel(); i++) t.f32()[i] = std::floor(t.f32()[i]);
            return Inputs{t.requires_grad_(true)};
          },
          [=](const Inputs& in) { return max_pool2d(in[0], k, s, p); }, 0, 0};
}

OpCase ce_case(int64_t n, int64_t k, float smoothing) {
  return {"cross_entropy " + std::to_string(n) + "x" + std::to_string(k) + " smoothing " + std::to_string(smoothing),
          [=](Rng& r) { return Inputs{rand_grad({n, k}, -4, 4, r), labels_for(n, k, r)}; },
          [=](const Inputs& in) { return cross_entropy(in[0], in[1], smoothing); }, 1e-5, 1e-5};
}

OpCase distill_case(int64_t n, int64_t k, float temperature) {
  return {"distillation_loss " + std::to_string(n) + "x" + std::to_string(k) + " T " + std::to_string(temperature),
          [=](Rng& r) { return Inputs{rand_grad({n, k}, -4, 4, r), rand_uniform({n, k}, -4, 4, r)}; },
          [=](const Inputs& in) { return distillation_loss(in[0], in[1], temperature); }, 1e-5, 1e-5};
}

}  // namespace

// --- everywhere: what the build and the machine have ------------------------------------------------------

TEST_CASE("cuda: built() says whether the backend was compiled; available() whether a GPU can run it") {
#ifdef ENGINE_CUDA
  CHECK(cuda::built());
#else
  CHECK_FALSE(cuda::built());
  CHECK_FALSE(cuda::available());
#endif
  if (cuda::available()) {
    CHECK(cuda::unavailable_reason().empty());
    MESSAGE("CUDA is available: the op families below run on the GPU");
  } else {
    MESSAGE("CUDA is not available: " << cuda::unavailable_reason());
  }
}

TEST_CASE("cuda: without a usable GPU, asking for CUDA memory fails at once with the reason") {
  if (cuda::available()) {
    Tensor t = Tensor::zeros({2}, DType::f32, Device::cuda);
    CHECK(t.device() == Device::cuda);
    CHECK(t.to_vector() == std::vector<float>{0, 0});
    return;
  }
  const std::string reason = cuda::unavailable_reason();
  CHECK_FALSE(reason.empty());  // "no CUDA GPU: ...", "no CUDA backend in this build ...", "... cuDNN ..."
  const AllocStats before = cuda::alloc_stats();
  CHECK_THROWS_WITH_AS(Tensor::zeros({2}, DType::f32, Device::cuda), doctest::Contains(reason.c_str()),
                       std::runtime_error);
  CHECK_THROWS_WITH_AS(Tensor::full({3}, 1.f).to(Device::cuda), doctest::Contains(reason.c_str()),
                       std::runtime_error);
  CHECK_THROWS_WITH_AS(cuda::alloc(16), doctest::Contains(reason.c_str()), std::runtime_error);
  CHECK_THROWS_WITH_AS(cuda::require(), doctest::Contains(reason.c_str()), std::runtime_error);
  const AllocStats after = cuda::alloc_stats();
  CHECK(after.system_allocs == before.system_allocs);
  CHECK(after.bytes_in_use == before.bytes_in_use);
  CHECK_NOTHROW(cuda::release_cached_memory());
  CHECK_NOTHROW(cuda::synchronize());
}

// --- on a GPU: the op table, family by family ---------------------------------------------------------------

TEST_CASE("cuda: element-wise ops with broadcasting match the CPU" * gpu_or_skip("element-wise ops")) {
  std::vector<OpCase> cases;
  add_binary_cases(cases, "add", add);
  add_binary_cases(cases, "sub", sub);
  add_binary_cases(cases, "mul", mul);
  add_binary_cases(cases, "div", div);
  cases.push_back(unary_case("relu", relu, -2, 2, 0));
  cases.push_back(unary_case("square", square, -2, 2));
  cases.push_back(unary_case("sqrt", sqrt, 0.5f, 3));
  cases.push_back(unary_case("rsqrt", rsqrt, 0.5f, 3));
  cases.push_back(unary_case("round_ste", round_ste, -4, 4, 0));
  cases.push_back(unary_case("sigmoid", sigmoid, -4, 4));
  cases.push_back(unary_case("abs", abs, -2, 2, 0));
  cases.push_back({"pow", [](Rng& r) { return Inputs{rand_grad({1000}, 0.5f, 3, r)}; },
                   [](const Inputs& in) { return pow(in[0], 2.5f); }});
  cases.push_back({"clamp", [](Rng& r) { return Inputs{rand_grad({3, 4, 50}, -2, 2, r)}; },
                   [](const Inputs& in) { return clamp(in[0], -0.5f, 0.7f); }, 0, 0});
  cases.push_back({"add_scalar", [](Rng& r) { return Inputs{rand_grad({1000}, -2, 2, r)}; },
                   [](const Inputs& in) { return add_scalar(in[0], 0.25f); }});
  cases.push_back({"mul_scalar", [](Rng& r) { return Inputs{rand_grad({1000}, -2, 2, r)}; },
                   [](const Inputs& in) { return mul_scalar(in[0], -1.5f); }});
  cases.push_back({"round_ste of exact halves (half to even)",
                   [](Rng&) {
                     return Inputs{Tensor::from_vector({-2.5f, -1.5f, -0.5f, 0.5f, 1.5f, 2.5f, 0.49999997f, 1e7f + 1},
                                                       {8}).requires_grad_(true)};
                   },
                   [](const Inputs& in) { return round_ste(in[0]); }, 0, 0});
  // In place, not recorded: the updated tensor is the output.
  cases.push_back({"add_ axpy_ scale_ fill_",
                   [](Rng& r) { return Inputs{rand_uniform({5, 300}, -1, 1, r), rand_uniform({5, 300}, -1, 1, r)}; },
                   [](const Inputs& in) {
                     Tensor y = in[0].clone(), z = in[0].clone();
                     add_(y, in[1]);
                     axpy_(y, -0.75f, in[1]);
                     scale_(y, 3.f);
                     z.fill_(2.f);
                     return add(y, z);
                   }});
  run_cases(cases);
}

TEST_CASE("cuda: sums, means, pooling and sum_to match the CPU" * gpu_or_skip("reductions")) {
  std::vector<OpCase> cases;
  auto sum_case = [&](Shape s, std::vector<int> dims, bool keepdim, bool is_mean) {
    std::string name = std::string(is_mean ? "mean " : "sum ") + s.str() + " over";
    for (int d : dims) name.append(" ").append(std::to_string(d));
    cases.push_back({name + (keepdim ? " keepdim" : ""), [s](Rng& r) { return Inputs{rand_grad(s, -1, 1, r)}; },
                     [=](const Inputs& in) { return (is_mean ? mean : sum)(in[0], dims, keepdim); },
                     1e-5, 1e-5});
  };
  sum_case({4, 6}, {1}, false, false);                 // short rows
  sum_case({5, 3000}, {1}, true, false);               // long rows: a block per row
  sum_case({3000, 7}, {0}, false, false);              // long columns: 32 x 8 blocks
  sum_case({2, 40, 70}, {1}, false, true);             // [outer, mid, inner], all > 1
  sum_case({70000, 17, 2}, {1}, false, false);         // more rows than a grid's y dimension
  sum_case({2, 3, 4, 5}, {0, 2, 3}, true, false);      // two runs of dims
  sum_case({2, 3, 4, 5}, {-1, 1}, false, true);
  sum_case({8, 3, 5, 5}, {0, 1, 2, 3}, false, true);
  cases.push_back({"sum_all", [](Rng& r) { return Inputs{rand_grad({17, 33, 9}, -1, 1, r)}; },
                   [](const Inputs& in) { return sum_all(in[0]); }, 1e-5, 1e-4});
  cases.push_back({"mean_all", [](Rng& r) { return Inputs{rand_grad({1000, 100}, -1, 1, r)}; },
                   [](const Inputs& in) { return mean_all(in[0]); }, 1e-5, 1e-6});
  cases.push_back({"global_avg_pool", [](Rng& r) { return Inputs{rand_grad({4, 6, 7, 7}, -1, 1, r)}; },
                   [](const Inputs& in) { return global_avg_pool(in[0]); }});
  cases.push_back({"sum_to [2, 3, 4, 5] -> [3, 1, 1]",
                   [](Rng& r) { return Inputs{rand_grad({2, 3, 4, 5}, -1, 1, r)}; },
                   [](const Inputs& in) { return sum_to(in[0], {3, 1, 1}); }});
  cases.push_back({"reshape and flatten", [](Rng& r) { return Inputs{rand_grad({2, 3, 4, 5}, -1, 1, r)}; },
                   [](const Inputs& in) { return mul(flatten(in[0]), reshape(in[0], {2, 60})); }});
  run_cases(cases);
}

TEST_CASE("cuda: pad2d and the RepVGG, ACNet and OREPA merges it serves match the CPU" * gpu_or_skip("pad2d")) {
  run_cases({
      {"pad2d 1", [](Rng& r) { return Inputs{rand_grad({6, 4, 1, 1}, -1, 1, r)}; },
       [](const Inputs& in) { return pad2d(in[0], 1); }},
      {"pad2d 2", [](Rng& r) { return Inputs{rand_grad({2, 3, 5, 4}, -1, 1, r)}; },
       [](const Inputs& in) { return pad2d(in[0], 2); }},
      {"pad2d 1, 0 (ACNet's 1x3 kernel)", [](Rng& r) { return Inputs{rand_grad({6, 4, 1, 3}, -1, 1, r)}; },
       [](const Inputs& in) { return pad2d(in[0], 1, 0); }},
      {"pad2d 0, 1 (ACNet's 3x1 kernel)", [](Rng& r) { return Inputs{rand_grad({6, 4, 3, 1}, -1, 1, r)}; },
       [](const Inputs& in) { return pad2d(in[0], 0, 1); }},
      {"pad2d 2, 1", [](Rng& r) { return Inputs{rand_grad({2, 3, 5, 4}, -1, 1, r)}; },
       [](const Inputs& in) { return pad2d(in[0], 2, 1); }},
      {"3x3 + pad(1x1) * scale", [](Rng& r) {
         return Inputs{rand_grad({8, 4, 3, 3}, -1, 1, r), rand_grad({8, 4, 1, 1}, -1, 1, r),
                       rand_grad({8, 1, 1, 1}, -1, 1, r)};
       },
       [](const Inputs& in) { return add(in[0], mul(pad2d(in[1], 1), in[2])); }},
      {"merge_acb (ACNet: 3x3 + 1x3 + 3x1, each BN folded)", [](Rng& r) {
         Inputs in = {rand_grad({8, 4, 3, 3}, -1, 1, r), rand_grad({8, 4, 1, 3}, -1, 1, r), rand_grad({8, 4, 3, 1}, -1, 1, r)};
         for (int i = 0; i < 3; i++)  // γ, β, μ, σ² of each branch's BN
           for (auto [lo, hi] : {std::pair{0.5f, 1.5f}, {-0.3f, 0.3f}, {-0.3f, 0.3f}, {0.5f, 1.5f}}) in.push_back(rand_grad({8}, lo, hi, r));
         return in;
       },
       [](const Inputs& in) {
         auto bn = [&](int i) { return layers::BnTensors{in[3 + 4 * i], in[4 + 4 * i], in[5 + 4 * i], in[6 + 4 * i], 1e-5f}; };
         const layers::KernelBias kb = layers::merge_acb(in[0], bn(0), in[1], bn(1), in[2], bn(2));
         return add(kb.kernel, reshape(kb.bias, {8, 1, 1, 1}));
       }},
      {"merge_orepa (OREPA: six scaled branches, groups 2)", [](Rng& r) {
         // 4 -> 8 in 2 groups: T = 4 internal channels, expansion 8
         return Inputs{rand_grad({8, 2, 3, 3}, -1, 1, r), rand_grad({8, 2, 1, 1}, -1, 1, r), rand_grad({3, 3}, 0, 1, r),
                       rand_grad({8, 2, 1, 1}, -1, 1, r), rand_grad({8, 3, 3}, -1, 1, r), rand_grad({4, 2, 1, 1}, -1, 1, r),
                       rand_grad({4, 2, 1, 1}, 0, 1, r),  rand_grad({8, 2, 3, 3}, -1, 1, r), rand_grad({8, 2, 1, 1}, -1, 1, r),
                       rand_grad({32, 1, 3, 3}, -1, 1, r), rand_grad({8, 16, 1, 1}, -1, 1, r), rand_grad({6, 8}, -1, 1, r)};
       },
       [](const Inputs& in) {
         return layers::merge_orepa({in[0], in[1], in[2], in[3], in[4], in[5], in[6], in[7], in[8], in[9], in[10], in[11]}, 2);
       }},
  });
}

// RepQ's pieces are composed ops (layers/quantizer.cpp, layers/bn_fold.cpp): they run on CUDA through the
// kernels above, and must agree with the CPU there too.
TEST_CASE("cuda: the LSQ fake quantizer and BN folding (RepQ-BN, RepQ-BNEst) match the CPU" * gpu_or_skip("RepQ")) {
  auto lsq = [](int bits, layers::Codes codes, int64_t channels, float step) {
    return [=](const Inputs& in) {
      layers::Quantizer q(bits, codes, channels);
      q.to(in[0].device());
      q.set_step(std::vector<float>(channels, step));
      return q.forward(in[0]);
    };
  };
  run_cases({
      {"LSQ weight 4 bits, per channel", [](Rng& r) { return Inputs{rand_grad({6, 4, 3, 3}, -1, 1, r)}; },
       lsq(4, layers::Codes::weight, 6, 0.1f)},
      {"LSQ activation 8 bits", [](Rng& r) { return Inputs{rand_grad({2, 4, 5, 5}, 0, 3, r)}; },
       lsq(8, layers::Codes::unsigned_act, 1, 0.02f)},
      {"channel_mean_var", [](Rng& r) { return Inputs{rand_grad({3, 5, 6, 6}, -1, 2, r)}; },
       [](const Inputs& in) { return channel_mean_var(in[0]); }},
      {"select", [](Rng& r) { return Inputs{rand_grad({3, 5, 6}, -1, 2, r)}; },
       [](const Inputs& in) { return select(in[0], 1); }},
      {"channel moments", [](Rng& r) { return Inputs{rand_grad({3, 5, 6, 6}, -1, 2, r)}; },
       [](const Inputs& in) {
         layers::Moments m = layers::channel_moments(in[0]);
         return add(m.mean, m.var);
       }},
      {"BNEst Eq. 5-6, groups 2", [](Rng& r) {
         return Inputs{rand_grad({8}, -1, 1, r), rand_grad({8}, 0.1f, 2, r), rand_grad({6, 4, 3, 3}, -1, 1, r)};
       },
       [](const Inputs& in) {
         layers::Moments e = layers::estimate_moments({in[0], in[1]}, in[2], Tensor(), 2);
         return add(e.mean, e.var);
       }},
  });
}

TEST_CASE("cuda: conv2d through cuDNN matches the CPU (oneDNN), with its gradients" * gpu_or_skip("conv2d")) {
  run_cases({
      conv_case(2, 3, 8, 8, 4, 3, 3, 1, 1, 1, 1, true),     // 3x3, padding 1, bias
      conv_case(2, 4, 9, 9, 6, 3, 3, 2, 1, 1, 1, false),    // stride 2, odd size
      conv_case(3, 8, 5, 5, 8, 1, 1, 1, 0, 0, 1, true),     // 1x1
      conv_case(2, 4, 8, 8, 8, 1, 1, 2, 0, 0, 1, false),    // 1x1 stride 2 (RepVGG's downsampling branch)
      conv_case(2, 4, 8, 8, 6, 3, 3, 2, 1, 1, 2, true),     // groups 2
      conv_case(2, 6, 7, 7, 6, 3, 3, 1, 1, 1, 6, false),    // depthwise
      conv_case(1, 3, 11, 13, 5, 5, 5, 1, 2, 2, 1, true),   // 5x5, non-square input
      conv_case(8, 16, 16, 16, 32, 3, 3, 1, 1, 1, 1, true), // a real layer's size
      conv_case(2, 8, 9, 8, 8, 1, 3, 2, 0, 1, 2, false),    // 1x3, padding (0, 1): ACNet's hor_conv
      conv_case(2, 8, 7, 9, 8, 3, 1, 1, 1, 0, 1, true),     // 3x1, padding (1, 0): ver_conv
  });
}

TEST_CASE("cuda: linear through cuBLAS matches the CPU, with its gradients" * gpu_or_skip("linear")) {
  run_cases({linear_case(4, 7, 5, true), linear_case(4, 7, 5, false), linear_case(1, 3, 2, true),
             linear_case(64, 512, 10, true), linear_case(33, 65, 129, false)});
}

TEST_CASE("cuda: batch_norm2d training and eval match the CPU: outputs, gradients, running statistics" *
          gpu_or_skip("batch_norm2d")) {
  std::vector<OpCase> cases;
  for (bool training : {true, false}) {
    cases.push_back(bn_case(4, 3, 5, 5, training));
    cases.push_back(bn_case(16, 8, 1, 1, training));    // HW = 1
    cases.push_back(bn_case(2, 3, 1, 2, training));     // fewer values than threads
    cases.push_back(bn_case(8, 16, 32, 32, training));  // M = 8192 values a channel
  }
  run_cases(cases);
}

TEST_CASE("cuda: the fused RepVGG ops (bn_add_relu with and without the ReLU, conv2d_relu) match the CPU" *
          gpu_or_skip("fused ops")) {
  std::vector<OpCase> cases;
  for (bool training : {true, false})
    for (bool relu : {true, false})
      for (int branches : {1, 2, 3}) cases.push_back(bn_add_relu_case(branches, training, relu));
  cases.push_back({"conv2d_relu (inference: no input requires grad)",
                   [](Rng& r) {
                     return Inputs{rand_uniform({2, 4, 9, 9}, -1, 1, r), rand_uniform({8, 2, 3, 3}, -0.5f, 0.5f, r),
                                   rand_uniform({8}, -0.5f, 0.5f, r)};
                   },
                   [](const Inputs& in) { return conv2d_relu(in[0], in[1], in[2], 2, 1, 2); }, 1e-4, 1e-4});
  run_cases(cases);
}

TEST_CASE("cuda: max_pool2d matches the CPU exactly: values, argmax ties, routed gradients" * gpu_or_skip("max_pool2d")) {
  run_cases({
      max_pool_case({2, 4, 9, 9}, 3, 2, 1, false),    // ResNet's stem
      max_pool_case({2, 4, 8, 8}, 3, 2, 1, true),     // the stem, ties; the last window in the padding
      max_pool_case({3, 5, 7, 10}, 2, 2, 0, false),   // 2x2, the last column left out
      max_pool_case({2, 3, 6, 5}, 3, 1, 1, true),     // overlapping windows, ties
      max_pool_case({2, 3, 5, 7}, 2, 3, 1, false),    // stride beyond the kernel
      max_pool_case({8, 16, 32, 32}, 3, 2, 1, true),  // a real layer's size
  });
}

TEST_CASE("cuda: cross_entropy and topk_correct match the CPU" * gpu_or_skip("cross_entropy")) {
  run_cases({ce_case(8, 10, 0.f), ce_case(8, 10, 0.1f), ce_case(3, 1000, 0.f), ce_case(37, 5, 0.2f), distill_case(8, 10, 4.f),
             distill_case(3, 1000, 1.f)});
  Rng rng(5);
  Tensor logits = rand_uniform({50, 10}, -3, 3, rng), labels = labels_for(50, 10, rng);
  for (int k : {1, 5})
    CHECK(topk_correct(logits.to(Device::cuda), labels.to(Device::cuda), k) == topk_correct(logits, labels, k));
  // A label outside [0, K) on the GPU (not range-checked there) gives a NaN loss, not a silent number.
  labels.data<int32_t>()[3] = 10;
  CHECK(std::isnan(cross_entropy(logits.to(Device::cuda), labels.to(Device::cuda)).item()));
}

TEST_CASE("cuda: an SGD step with momentum, nesterov and weight decay matches the CPU" * gpu_or_skip("sgd")) {
  Rng rng(6);
  Tensor p = rand_uniform({300}, -1, 1, rng), q = rand_uniform({4, 5}, -1, 1, rng);
  Tensor gp = rand_uniform({300}, -1, 1, rng), gq = rand_uniform({4, 5}, -1, 1, rng);
  for (bool nesterov : {false, true}) {
    std::vector<std::vector<float>> results[2];
    for (Device d : {Device::cpu, Device::cuda}) {
      Tensor pd = d == Device::cpu ? p.clone() : p.to(d), qd = d == Device::cpu ? q.clone() : q.to(d);
      pd.requires_grad_(true);
      qd.requires_grad_(true);
      SGD opt({{{pd}, 5e-4f}, {{qd}, 0.f}}, 0.1f, 0.9f, nesterov);
      for (int step = 0; step < 3; step++) {
        pd.set_grad(d == Device::cpu ? gp.clone() : gp.to(d));
        qd.set_grad(d == Device::cpu ? gq.clone() : gq.to(d));
        opt.step();
      }
      results[d == Device::cuda] = {pd.to_vector(), qd.to_vector()};
    }
    check_close(results[1][0], results[0][0], 1e-6, 1e-6, "sgd p");
    check_close(results[1][1], results[0][1], 1e-6, 1e-6, "sgd q");
  }
}

// A small network end to end: conv, BN (training), relu, a grouped stride-2 conv, pooling, linear and the
// loss, every parameter's gradient compared; run twice on the GPU, the gradients are bitwise the same.
TEST_CASE("cuda: a conv-BN-relu-linear network's loss and gradients match the CPU, deterministically" *
          gpu_or_skip("a small network")) {
  OpCase net{"network",
             [](Rng& r) {
               return Inputs{rand_uniform({4, 3, 12, 12}, -1, 1, r), labels_for(4, 10, r),
                             rand_grad({8, 3, 3, 3}, -0.4f, 0.4f, r), rand_grad({8}, 0.5f, 1.5f, r),
                             rand_grad({8}, -0.2f, 0.2f, r), rand_uniform({8}, 0, 0, r), rand_uniform({8}, 1, 1, r),
                             rand_grad({16, 4, 3, 3}, -0.3f, 0.3f, r), rand_grad({16}, -0.1f, 0.1f, r),
                             rand_grad({10, 16}, -0.3f, 0.3f, r), rand_grad({10}, -0.1f, 0.1f, r)};
             },
             [](const Inputs& in) {
               Tensor h = conv2d(in[0], in[2], Tensor(), 1, 1, 1);
               h = relu(batch_norm2d(h, in[3], in[4], in[5], in[6], true));
               h = relu(conv2d(h, in[7], in[8], 2, 1, 2));
               return cross_entropy(linear(global_avg_pool(h), in[9], in[10]), in[1], 0.1f);
             },
             1e-4, 1e-5};
  run_cases({net});
  Rng rng(12345);
  Inputs inputs = net.make(rng);
  Result a = run_on(Device::cuda, net, inputs), b = run_on(Device::cuda, net, inputs);
  CHECK(a.out == b.out);
  CHECK(a.grads == b.grads);
  CHECK(a.after == b.after);
}

TEST_CASE("cuda: the caching allocator reuses freed blocks; copies round-trip every dtype" * gpu_or_skip("memory")) {
  { Tensor warm = Tensor::empty({1000}, DType::f32, Device::cuda); }
  const AllocStats s0 = cuda::alloc_stats();
  { Tensor t = Tensor::empty({1000}, DType::f32, Device::cuda); }
  const AllocStats s1 = cuda::alloc_stats();
  CHECK(s1.system_allocs == s0.system_allocs);
  CHECK(s1.cache_hits == s0.cache_hits + 1);
  CHECK(s1.bytes_in_use == s0.bytes_in_use);
  cuda::release_cached_memory();
  CHECK(cuda::alloc_stats().bytes_cached == 0);

  Tensor bytes = Tensor::empty({5}, DType::u8);
  for (int i = 0; i < 5; i++) bytes.data<uint8_t>()[i] = (uint8_t)(250 + i);
  Tensor back = bytes.to(Device::cuda).clone().to(Device::cpu);  // host -> device -> device -> host
  CHECK(std::memcmp(back.raw(), bytes.raw(), 5) == 0);
  Tensor empty = Tensor::empty({0, 3}, DType::f32, Device::cuda);
  CHECK(empty.to_vector().empty());
  Tensor dst = Tensor::zeros({4}, DType::f32, Device::cuda);
  dst.copy_(Tensor::from_vector({1, 2, 3, 4}, {4}));
  CHECK(dst.to_vector() == std::vector<float>{1, 2, 3, 4});
}

// The integer convolution (engine/cuda/int8.cu: im2col, cuBLAS int8 GEMM, epilogue) against the CPU's
// oneDNN one (engine/cpu/int8.h, itself tested against a plain integer loop in tests/test_int8.cpp): the
// s32 accumulator and the requantized u8 codes exactly, the f32 output to float rounding.
TEST_CASE("cuda: the int8 convolution matches the CPU's exactly" * gpu_or_skip("int8 conv")) {
  Rng rng(21);
  struct C { int64_t n, c, h, w, o; int k, stride, groups, z; };
  for (const C& t : {C{2, 16, 9, 7, 32, 3, 1, 1, 0}, C{3, 24, 8, 8, 16, 3, 2, 1, 0}, C{2, 32, 6, 5, 32, 3, 1, 2, 0},
                     C{5, 40, 1, 1, 10, 1, 1, 1, 0}, C{2, 3, 10, 11, 8, 3, 2, 1, 37}}) {
    CAPTURE(t.c);
    CAPTURE(t.groups);
    const int64_t oh = (t.h - 1) / t.stride + 1, ow = (t.w - 1) / t.stride + 1;
    QConvSpec q;
    q.s = {t.n, t.c, t.h, t.w, t.o, t.k, t.k, oh, ow, t.stride, (t.k - 1) / 2, (t.k - 1) / 2, t.groups, true};
    q.src_zero_point = t.z;
    Tensor x = Tensor::empty({t.n * t.h * t.w * t.c}, DType::u8), w = Tensor::empty({t.o * t.c / t.groups * t.k * t.k}, DType::i8);
    Tensor b = Tensor::empty({t.o}, DType::i32);
    for (int64_t i = 0; i < x.numel(); i++) x.data<uint8_t>()[i] = (uint8_t)rng.below(256);
    for (int64_t i = 0; i < w.numel(); i++) w.data<int8_t>()[i] = (int8_t)((int)rng.below(255) - 127);
    for (int64_t i = 0; i < b.numel(); i++) b.data<int32_t>()[i] = (int32_t)rng.below(20001) - 10000;
    const Tensor xd = x.to(Device::cuda), wd = w.to(Device::cuda), bd = b.to(Device::cuda);
    for (DType dst : {DType::i32, DType::u8, DType::f32}) {
      q.dst = dst;
      q.scales = dst == DType::i32 ? std::vector<float>{} : std::vector<float>(t.o, 0.0007f);
      for (int64_t o = 0; o < (int64_t)q.scales.size(); o++) q.scales[o] *= 1.0f + 0.01f * (float)o;
      const int64_t out = t.n * oh * ow * t.o;
      Tensor y_cpu = Tensor::empty({out}, dst), y_gpu = Tensor::empty({out}, dst, Device::cuda);
      cpu::QConv(q, w.raw(), b.raw()).run(x.raw(), y_cpu.raw());
      cuda::qconv_forward(q, xd.data<uint8_t>(), wd.data<int8_t>(), bd.data<int32_t>(), y_gpu.raw());
      const Tensor y = y_gpu.to(Device::cpu);
      if (dst == DType::f32) check_close(y.to_vector(), y_cpu.to_vector(), 1e-6, 1e-6);
      else CHECK(std::memcmp(y.raw(), y_cpu.raw(), y.nbytes()) == 0);
    }
  }
}

// ./infer --device cuda (deploy/integer_model.h): the quantized blocks on the GPU, the rest on the host. The codes
// between blocks are exact (the test above), so the logits are the CPU model's to float rounding of the last
// block's f32 output and what follows it.
TEST_CASE("cuda: the integer model with its blocks on the GPU gives the CPU's logits" * gpu_or_skip("int8 model")) {
  const QuantizedSmall q = quantized_small(8, quant::Granularity::channel, false);
  const deploy::Int8Model m = quant::export_int8(*q.model, "ptq-minmax", "channel", {});
  deploy::IntegerModel on_cpu(m), on_gpu(m, Device::cuda);
  const std::vector<float> expected = on_cpu.forward(q.images).to_vector();
  check_close(on_gpu.forward(q.images).to_vector(), expected, 1e-5, 1e-5);
  CHECK(on_gpu.describe()[1].find("cuda:") != std::string::npos);  // stage1.0 ran on the GPU
  CHECK(on_gpu.forward(q.images).to_vector() == on_gpu.forward(q.images).to_vector());
}
