// Frozen tensors (Tensor::freeze_, Module::freeze): what refuses to write them, and the convolution's forms
// kept with a frozen weight (engine/cpu/frozen.h): the same results as the weights reordered on every call,
// one form per weight and layout, none remade or allocated in later calls.
#include <cstring>

#include "engine/allocator.h"
#include "engine/autograd.h"
#include "engine/cpu/frozen.h"
#include "engine/ops.h"
#include "engine/optim.h"
#include "engine/random.h"
#include "models/model.h"
#include "tests/testing.h"

using namespace engine;

namespace {

bool bit_equal(const Tensor& a, const Tensor& b) {
  const std::vector<float> va = a.to_vector(), vb = b.to_vector();
  return va.size() == vb.size() && std::memcmp(va.data(), vb.data(), va.size() * sizeof(float)) == 0;
}

int forms(const Tensor& t) { return cpu::derived_forms(*t.impl()->storage); }

}  // namespace

TEST_CASE("a frozen tensor refuses writes and gradients") {
  Rng rng(1);
  Tensor w = rand_uniform({4, 3}, -1, 1, rng).requires_grad_();
  w.set_grad(Tensor::zeros({4, 3}));
  w.freeze_();
  CHECK(w.frozen());
  CHECK_FALSE(w.requires_grad());
  CHECK_FALSE(w.grad().defined());
  CHECK_THROWS_WITH_AS(w.fill_(0.f), doctest::Contains("frozen"), std::runtime_error);
  CHECK_THROWS_WITH_AS(w.copy_(Tensor::zeros({4, 3})), doctest::Contains("frozen"), std::runtime_error);
  CHECK_THROWS_WITH_AS(w.requires_grad_(), doctest::Contains("frozen"), std::runtime_error);
  CHECK_THROWS_WITH_AS(SGD({ParamGroup{{w}}}, 0.1f), doctest::Contains("frozen"), std::runtime_error);
  CHECK(w.detach().frozen());  // a view of the same storage is the same constant

  // An optimizer made before the freeze: its step refuses the frozen parameter rather than write it.
  Tensor p = rand_uniform({3}, -1, 1, rng).requires_grad_();
  SGD sgd({ParamGroup{{p}}}, 0.1f);
  p.set_grad(Tensor::full({3}, 1.f));
  p.freeze_();
  p.set_grad(Tensor::full({3}, 1.f));
  const std::vector<float> before = p.to_vector();
  CHECK_THROWS_WITH_AS(sgd.step(), doctest::Contains("frozen"), std::runtime_error);
  CHECK(p.to_vector() == before);
}

TEST_CASE("conv2d with frozen weights: the results of unfrozen ones, each weight's form made once") {
  Rng rng(2);
  struct Case {
    int64_t n, c, h, w, o;
    int k, stride, pad;
  };
  // 3x3 stride 1 with >= 200 output pixels (our Winograd under ONEDNN_MAX_CPU_ISA=AVX2, oneDNN's on AVX-512),
  // batch 1 on a small plane (oneDNN's direct kernel natively, ours under the cap), stride 2, 1x1, a 3-channel
  // NCHW input (the stem).
  for (const Case& k : {Case{2, 16, 12, 10, 24, 3, 1, 1}, Case{1, 32, 7, 7, 32, 3, 1, 1}, Case{2, 16, 9, 8, 32, 3, 2, 1},
                        Case{2, 32, 6, 6, 16, 1, 1, 0}, Case{2, 3, 11, 11, 16, 3, 2, 1}}) {
    const std::string what = "x [" + std::to_string(k.n) + ", " + std::to_string(k.c) + ", " + std::to_string(k.h) +
                             ", " + std::to_string(k.w) + "] o " + std::to_string(k.o) + " k " + std::to_string(k.k) +
                             " stride " + std::to_string(k.stride);
    CAPTURE(what);
    const Tensor x = rand_uniform({k.n, k.c, k.h, k.w}, -1, 1, rng);
    const Tensor x_other_batch = rand_uniform({k.n + 1, k.c, k.h, k.w}, -1, 1, rng);
    Tensor w1 = rand_uniform({k.o, k.c, k.k, k.k}, -1, 1, rng), w2 = rand_uniform({k.o, k.c, k.k, k.k}, -1, 1, rng);
    const Tensor b = rand_uniform({k.o}, -1, 1, rng);
    NoGradGuard no_grad;
    // Unfrozen: reordered on every call.
    const Tensor y1 = conv2d(x, w1, b, k.stride, k.pad), y2 = conv2d(x, w2, b, k.stride, k.pad);
    const Tensor y1_other = conv2d(x_other_batch, w1, b, k.stride, k.pad);
    const Tensor r1 = conv2d_relu(x, w1, b, k.stride, k.pad);
    CHECK(forms(w1) == 0);
    w1.freeze_();
    w2.freeze_();
    // Two weights of one shape share one cached call: each must find its own form, in either order.
    CHECK(bit_equal(conv2d(x, w1, b, k.stride, k.pad), y1));
    const int made = forms(w1);
    CHECK(made <= 1);
    CHECK(bit_equal(conv2d(x, w2, b, k.stride, k.pad), y2));
    CHECK(bit_equal(conv2d(x, w1, b, k.stride, k.pad), y1));
    CHECK(bit_equal(conv2d_relu(x, w1, b, k.stride, k.pad), r1));
    CHECK(forms(w1) == made);
    CHECK(forms(w2) == made);
    // Another batch: another primitive, whose weights' layout may differ (then one more form).
    CHECK(bit_equal(conv2d(x_other_batch, w1, b, k.stride, k.pad), y1_other));
    const int made_other = forms(w1);
    CHECK(made_other <= made + 1);
    const uint64_t allocs = alloc_stats().system_allocs;
    CHECK(bit_equal(conv2d(x, w1, b, k.stride, k.pad), y1));
    CHECK(bit_equal(conv2d(x_other_batch, w1, b, k.stride, k.pad), y1_other));
    CHECK(forms(w1) == made_other);
    CHECK(alloc_stats().system_allocs == allocs);
  }
}

TEST_CASE("conv2d keeps a frozen weight's form in the blocked layout: made once, then no reorder") {
  // 32 -> 32 channels in the activation layout: oneDNN (or our Winograd) wants the weights blocked (or
  // transformed), so the frozen weight gets exactly one form.
  Rng rng(3);
  const Tensor x = to_layout(rand_uniform({2, 32, 8, 8}, -1, 1, rng), activation_block());
  Tensor w = rand_uniform({32, 32, 3, 3}, -1, 1, rng);
  const Tensor b = rand_uniform({32}, -1, 1, rng);
  NoGradGuard no_grad;
  const Tensor y = conv2d(x, w, b, 1, 1);
  w.freeze_();
  CHECK(bit_equal(conv2d(x, w, b, 1, 1), y));
  // In plain NCHW (activation_block() 0, no CPU this engine knows) oneDNN may take the weights as they are.
  const int expected = activation_block() ? 1 : forms(w);
  CHECK(forms(w) == expected);
  CHECK(bit_equal(conv2d(x, w, b, 1, 1), y));
  CHECK(forms(w) == expected);
}

TEST_CASE("a frozen deploy model: the unfrozen model's logits, and it cannot be trained") {
  Rng rng(4);
  models::ArchConfig arch = models::arch_config("repvgg-cifar");
  std::shared_ptr<models::Model> model = models::make_model(arch, rng);
  model->switch_to_deploy();
  model->eval();
  const Tensor x = rand_normal({2, 3, 32, 32}, 0.f, 1.f, rng);
  Tensor expected;
  {
    NoGradGuard no_grad;
    expected = model->forward(x);
  }
  model->freeze();
  for (const layers::Param& p : model->parameters()) {
    CAPTURE(p.name);
    CHECK(p.tensor.frozen());
  }
  for (int call = 0; call < 2; call++) {
    NoGradGuard no_grad;
    CHECK(bit_equal(model->forward(x), expected));
  }
  std::vector<Tensor> params;
  for (const layers::Param& p : model->parameters()) params.push_back(p.tensor);
  CHECK_THROWS_WITH_AS(SGD({ParamGroup{params}}, 0.1f), doctest::Contains("frozen"), std::runtime_error);
}
