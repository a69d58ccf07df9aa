// SGD against a double-precision reference loop and against torch.optim.SGD, its no-allocation steady
// state and checkpoint state; the learning-rate schedules against PyTorch's schedulers and hand-computed
// values. The PyTorch numbers are in tests/reference/optim.safetensors, written by
// tests/reference/make_optim_refs.py. (An optimizer step is not differentiable: no gradient check here.)
#include "engine/optim.h"

#include <cmath>

#include "engine/allocator.h"
#include "engine/cuda/cuda_backend.h"
#include "engine/ops.h"
#include "engine/random.h"
#include "engine/safetensors.h"
#include "engine/schedule.h"
#include "tests/gradcheck.h"

using namespace engine;
using testing_util::check_close;

static const std::string kRefs = "tests/reference/optim.safetensors";

// --- SGD -------------------------------------------------------------------------------------------------

// One parameter's state in the reference: double precision, torch.optim.SGD's formulas written out.
struct RefParam {
  std::vector<double> p, buf;  // buf is empty until the first step with momentum
};

static void ref_sgd_step(RefParam& r, const std::vector<float>& grad, double lr, double momentum, double wd,
                         bool nesterov) {
  bool first = r.buf.empty();
  if (momentum > 0 && first) r.buf.resize(r.p.size());
  for (size_t i = 0; i < r.p.size(); i++) {
    double d = grad[i] + wd * r.p[i];
    if (momentum > 0) {
      r.buf[i] = first ? d : momentum * r.buf[i] + d;
      d = nesterov ? d + momentum * r.buf[i] : r.buf[i];
    }
    r.p[i] -= lr * d;
  }
}

static std::vector<double> to_double(const Tensor& t) {
  std::vector<float> v = t.to_vector();
  return std::vector<double>(v.begin(), v.end());
}

TEST_CASE("SGD matches a double-precision reference: momentum, Nesterov, weight decay per group") {
  struct Config { float momentum; bool nesterov; };
  // Shapes: odd sizes, a conv weight, and one large enough for the threaded path of the kernel.
  std::vector<Shape> shapes = {{3, 4}, {7}, {2, 3, 5, 5}, {40000}, {1}};
  const std::vector<float> decay = {0.05f, 0.f, 1e-3f, 0.05f, 0.f};  // each parameter's, by its group below
  for (Config cfg : {Config{0.f, false}, Config{0.9f, false}, Config{0.9f, true}, Config{0.5f, true}}) {
    INFO("momentum " << cfg.momentum << " nesterov " << cfg.nesterov);
    Rng rng(11);
    std::vector<Tensor> params;
    std::vector<RefParam> ref;
    for (const Shape& s : shapes) {
      params.push_back(rand_uniform(s, -1, 1, rng).requires_grad_());
      ref.push_back({to_double(params.back()), {}});
    }
    // Two groups with 0.05 and 0 decay, a third with 1e-3.
    std::vector<ParamGroup> groups = {{{params[0], params[3]}, 0.05f}, {{params[1], params[4]}, 0.f},
                                      {{params[2]}, 1e-3f}};
    SGD opt(groups, 0.1f, cfg.momentum, cfg.nesterov);
    for (int step = 0; step < 6; step++) {
      if (step == 4) opt.set_lr(0.02f);
      for (size_t k = 0; k < params.size(); k++) {
        if (k == 2 && step < 2) continue;  // no gradient yet: skipped, no momentum buffer
        Tensor g = rand_uniform(shapes[k], -2, 2, rng);
        params[k].set_grad(g);
        ref_sgd_step(ref[k], g.to_vector(), opt.lr(), cfg.momentum, decay[k], cfg.nesterov);
      }
      opt.step();
      for (size_t k = 0; k < params.size(); k++) {
        std::string what = "step " + std::to_string(step) + " param " + std::to_string(k);
        check_close(params[k].to_vector(), ref[k].p, 1e-5, 1e-6, what);
      }
      for (auto& p : params) p.set_grad(Tensor());
    }
    // Buffers in group order then parameter order: params 0, 3, 1, 4, 2.
    std::vector<size_t> order = {0, 3, 1, 4, 2};
    REQUIRE(opt.momentum_buffers().size() == 5);
    for (size_t j = 0; j < order.size(); j++) {
      const Tensor& buf = opt.momentum_buffers()[j];
      CHECK(buf.defined() == (cfg.momentum > 0));
      if (buf.defined()) check_close(buf.to_vector(), ref[order[j]].buf, 1e-5, 1e-6, "buffer");
    }
  }
}

TEST_CASE("SGD matches torch.optim.SGD (PyTorch 1.13)") {
  st::File file = st::load(kRefs);
  auto get = [&](const std::string& name, std::vector<int64_t> shape) {
    return st::require(file, name, st::DType::F32, shape, kRefs).to_vector<float>();
  };
  const int steps = 5, c_first_grad = 2;  // as in make_optim_refs.py
  const std::vector<std::string> names = {"a", "b", "c"};
  const std::vector<std::vector<int64_t>> dims = {{3, 4}, {5}, {2, 3}};
  struct Config { std::string name; float momentum; bool nesterov; };
  for (const Config& cfg : {Config{"plain", 0.f, false}, Config{"momentum", 0.9f, false}, Config{"nesterov", 0.9f, true}}) {
    INFO(cfg.name);
    std::vector<Tensor> p;
    for (size_t k = 0; k < names.size(); k++)
      p.push_back(Tensor::from_vector(get("init." + names[k], dims[k]), Shape(dims[k])).requires_grad_());
    SGD opt({{{p[0], p[2]}, 0.05f}, {{p[1]}, 0.f}}, 0.1f, cfg.momentum, cfg.nesterov);
    for (int step = 0; step < steps; step++) {
      if (step == 3) opt.set_lr(0.05f);
      for (size_t k = 0; k < names.size(); k++) {
        std::vector<int64_t> stacked = dims[k];
        stacked.insert(stacked.begin(), steps);
        std::vector<float> all = get("grad." + names[k], stacked);
        int64_t n = Shape(dims[k]).numel();
        std::vector<float> g(all.begin() + step * n, all.begin() + (step + 1) * n);
        p[k].set_grad(k == 2 && step < c_first_grad ? Tensor() : Tensor::from_vector(g, Shape(dims[k])));
      }
      opt.step();
      for (size_t k = 0; k < names.size(); k++) {
        std::vector<int64_t> stacked = dims[k];
        stacked.insert(stacked.begin(), steps);
        std::vector<float> all = get(cfg.name + "." + names[k], stacked);
        int64_t n = Shape(dims[k]).numel();
        std::vector<float> want(all.begin() + step * n, all.begin() + (step + 1) * n);
        check_close(p[k].to_vector(), want, 1e-6, 1e-7, cfg.name + " step " + std::to_string(step) + " " + names[k]);
      }
    }
    // Buffers in group order: a, c, then b.
    std::vector<size_t> order = {0, 2, 1};
    for (size_t j = 0; j < order.size(); j++) {
      const Tensor& buf = opt.momentum_buffers()[j];
      REQUIRE(buf.defined() == (cfg.momentum > 0));
      if (buf.defined())
        check_close(buf.to_vector(), get(cfg.name + ".buf." + names[order[j]], dims[order[j]]), 1e-6, 1e-7,
                    cfg.name + " buffer " + names[order[j]]);
    }
  }
}

TEST_CASE("SGD zero_grad keeps the gradient buffers; momentum carries on with zero gradients") {
  Tensor w = Tensor::from_vector({1.f, -2.f, 3.f}, {3}).requires_grad_();
  Tensor unused = Tensor::zeros({2}).requires_grad_();
  SGD opt({{{w, unused}, 0.f}}, 0.5f, 0.9f);
  w.set_grad(Tensor::from_vector({1.f, 1.f, -2.f}, {3}));
  Tensor grad = w.grad();
  opt.step();  // buf = g; w -= 0.5 g
  CHECK(w.to_vector() == std::vector<float>{0.5f, -2.5f, 4.f});
  opt.zero_grad();
  CHECK(w.grad().same(grad));
  CHECK(grad.to_vector() == std::vector<float>(3, 0.f));
  CHECK_FALSE(unused.grad().defined());
  CHECK_FALSE(opt.momentum_buffers()[1].defined());
  opt.step();  // buf = 0.9 buf; w -= 0.5 * 0.9 g
  check_close(w.to_vector(), std::vector<double>{0.05, -2.95, 4.9}, 1e-6, 0, "second step");
  check_close(opt.momentum_buffers()[0].to_vector(), std::vector<double>{0.9, 0.9, -1.8}, 1e-6, 0, "buffer");
  CHECK(unused.to_vector() == std::vector<float>{0.f, 0.f});

  // A backward after zero_grad accumulates into the kept buffer.
  sum_all(mul_scalar(w, 3.f)).backward();
  CHECK(w.grad().same(grad));
  CHECK(grad.to_vector() == std::vector<float>(3, 3.f));
}

TEST_CASE("SGD step and zero_grad allocate nothing after the first step") {
  Rng rng(5);
  Tensor w = rand_uniform({16, 8, 3, 3}, -1, 1, rng).requires_grad_();
  Tensor b = rand_uniform({16}, -1, 1, rng).requires_grad_();
  Tensor big = rand_uniform({50000}, -1, 1, rng).requires_grad_();
  Tensor x = rand_uniform({16, 8, 3, 3}, -1, 1, rng);
  for (bool nesterov : {false, true}) {
    for (Tensor p : {w, b, big}) p.set_grad(Tensor());
    SGD opt({{{w, big}, 1e-4f}, {{b}, 0.f}}, 0.1f, 0.9f, nesterov);
    auto train_step = [&] {
      opt.zero_grad();
      sum_all(add(square(mul(w, x)), sum_all(b))).backward();
      sum_all(square(big)).backward();
      opt.step();
    };
    train_step();  // makes the gradient and momentum buffers, and fills the allocator's cache
    train_step();
    AllocStats before = alloc_stats();
    for (int i = 0; i < 3; i++) train_step();
    CHECK(alloc_stats().system_allocs == before.system_allocs);

    // The optimizer alone touches the allocator not at all, not even its cache.
    before = alloc_stats();
    for (int i = 0; i < 3; i++) {
      opt.step();
      opt.zero_grad();
    }
    AllocStats after = alloc_stats();
    CHECK(after.system_allocs == before.system_allocs);
    CHECK(after.cache_hits == before.cache_hits);
    CHECK(after.bytes_in_use == before.bytes_in_use);
  }
}

TEST_CASE("SGD momentum buffers are its checkpoint state: a copy resumes identically") {
  Rng rng(9);
  Tensor a = rand_uniform({4, 5}, -1, 1, rng).requires_grad_(), b = rand_uniform({3}, -1, 1, rng).requires_grad_();
  std::vector<Tensor> grads;
  for (int i = 0; i < 6; i++) grads.push_back(rand_uniform({4, 5}, -1, 1, rng));
  SGD opt({{{a}, 1e-2f}, {{b}, 0.f}}, 0.1f, 0.9f, true);
  for (int i = 0; i < 3; i++) {
    a.set_grad(grads[i]);
    opt.step();
  }
  // b never had a gradient: its buffer is not initialized.
  CHECK(opt.momentum_buffers()[0].defined());
  CHECK_FALSE(opt.momentum_buffers()[1].defined());

  Tensor a2 = a.clone().requires_grad_(), b2 = b.clone().requires_grad_();
  SGD resumed({{{a2}, 1e-2f}, {{b2}, 0.f}}, 0.1f, 0.9f, true);
  resumed.momentum_buffers()[0] = opt.momentum_buffers()[0].clone();
  for (int i = 3; i < 6; i++) {
    a.set_grad(grads[i]);
    a2.set_grad(grads[i]);
    opt.step();
    resumed.step();
  }
  CHECK(a2.to_vector() == a.to_vector());
  CHECK(resumed.momentum_buffers()[0].to_vector() == opt.momentum_buffers()[0].to_vector());

  resumed.momentum_buffers()[0] = Tensor::zeros({20});
  CHECK_THROWS_WITH_AS(resumed.step(), doctest::Contains("momentum buffer f32[20] cpu for parameter f32[4, 5]"),
                       std::runtime_error);
}

TEST_CASE("SGD on CUDA matches SGD on the CPU, and allocates nothing after the first step" *
          skip_unless(cuda::available(), "SGD on CUDA: " + cuda::unavailable_reason())) {
  Rng rng(13);
  std::vector<Shape> shapes = {{16, 8, 3, 3}, {7}, {40000}};
  for (bool nesterov : {false, true}) {
    std::vector<Tensor> cpu, gpu;
    for (const Shape& s : shapes) {
      cpu.push_back(rand_uniform(s, -1, 1, rng).requires_grad_());
      gpu.push_back(cpu.back().to(Device::cuda).requires_grad_());
    }
    SGD on_cpu({{{cpu[0], cpu[2]}, 0.05f}, {{cpu[1]}, 0.f, true}}, 0.1f, 0.9f, nesterov);  // [1] kept positive
    SGD on_gpu({{{gpu[0], gpu[2]}, 0.05f}, {{gpu[1]}, 0.f, true}}, 0.1f, 0.9f, nesterov);
    for (int step = 0; step < 4; step++) {
      for (size_t k = 0; k < shapes.size(); k++) {
        Tensor g = rand_uniform(shapes[k], -2, 2, rng);
        cpu[k].set_grad(g);
        if (step < 2) gpu[k].set_grad(g.to(Device::cuda));
        else gpu[k].grad().copy_(g);  // into the kept buffer: no allocation
      }
      on_cpu.step();
      on_gpu.step();
      for (size_t k = 0; k < shapes.size(); k++)
        check_close(gpu[k].to_vector(), cpu[k].to_vector(), 1e-5, 1e-6, "step " + std::to_string(step));
    }
    for (size_t j = 0; j < shapes.size(); j++)
      check_close(on_gpu.momentum_buffers()[j].to_vector(), on_cpu.momentum_buffers()[j].to_vector(), 1e-5, 1e-6,
                  "buffer");
    AllocStats before = alloc_stats(Device::cuda);
    for (int i = 0; i < 3; i++) {
      on_gpu.step();
      on_gpu.zero_grad();
    }
    CHECK(alloc_stats(Device::cuda).system_allocs == before.system_allocs);
    CHECK(alloc_stats(Device::cuda).bytes_in_use == before.bytes_in_use);
  }
}

TEST_CASE("SGD keeps a group of positive parameters positive by reflection, and only that group") {
  Tensor a = Tensor::from_vector({1.0f, 0.3f, 0.1f, 0.1f, NAN}, {5}).requires_grad_();
  Tensor b = Tensor::from_vector({1.0f, 0.3f, 0.1f, 0.1f, 0.f}, {5}).requires_grad_();
  SGD opt({{{a}, 0.f, true}, {{b}, 0.f}}, 0.1f);
  const Tensor g = Tensor::from_vector({1.f, 4.f, -1.f, 1.f, 1.f}, {5});
  a.set_grad(g.clone());
  b.set_grad(g.clone());
  opt.step();
  const std::vector<float> va = a.to_vector(), vb = b.to_vector();
  CHECK(va[0] == doctest::Approx(0.9f));  // the plain update
  CHECK(va[1] == doctest::Approx(0.1f));  // 0.3 − 0.4 = −0.1: reflected
  CHECK(va[2] == doctest::Approx(0.2f));
  CHECK(va[3] == 1.1920929e-7f);          // 0.1 − 0.1 = 0: float32's epsilon
  CHECK(std::isnan(va[4]));               // a NaN is not hidden
  CHECK(vb[1] == doctest::Approx(-0.1f)); // the other group is torch's SGD
  CHECK(vb[3] == 0.f);
}

TEST_CASE("SGD rejects bad settings with clear messages") {
  Tensor w = Tensor::zeros({2, 2}).requires_grad_();
  CHECK_THROWS_WITH_AS(SGD({{{w}, 0.f}}, 0.1f, 0.f, true), doctest::Contains("Nesterov momentum requires a momentum > 0"),
                       std::runtime_error);
  CHECK_THROWS_WITH_AS(SGD({{{w}, 0.f}}, -0.1f), doctest::Contains("invalid learning rate"), std::runtime_error);
  CHECK_THROWS_WITH_AS(SGD({{{w}, -1.f}}, 0.1f), doctest::Contains("group 0: invalid weight decay"), std::runtime_error);
  CHECK_THROWS_WITH_AS(SGD({{{w}, 0.f}, {{w}, 0.f}}, 0.1f), doctest::Contains("group 1, parameter 0 appears more than once"),
                       std::runtime_error);
  CHECK_THROWS_WITH_AS(SGD({{{Tensor::zeros({2}, DType::i32)}, 0.f}}, 0.1f), doctest::Contains("expected f32"),
                       std::runtime_error);
  SGD opt({{{w}, 0.f}}, 0.1f);
  w.set_grad(Tensor::zeros({4}));
  CHECK_THROWS_WITH_AS(opt.step(), doctest::Contains("gradient f32[4] cpu for parameter f32[2, 2] cpu"), std::runtime_error);
  CHECK_THROWS_WITH_AS(opt.set_lr(-1.f), doctest::Contains("invalid learning rate"), std::runtime_error);
}

// --- schedules -------------------------------------------------------------------------------------------

static std::vector<double> torch_lrs(const st::File& file, const std::string& name, int64_t epochs) {
  return st::require(file, name, st::DType::F64, {epochs}, kRefs).to_vector<double>();
}

// |got - want| <= tol at every epoch, reporting the first epoch that is not.
template <class F>
static void check_schedule(F lr_of_epoch, const std::vector<double>& want, double tol, const std::string& what) {
  for (size_t e = 0; e < want.size(); e++) {
    double got = lr_of_epoch((int)e);
    INFO(what << " epoch " << e << ": " << got << " vs torch " << want[e]);
    REQUIRE(std::fabs(got - want[e]) <= tol);
  }
}

TEST_CASE("cosine annealing matches CosineAnnealingLR, also past T_max") {
  st::File file = st::load(kRefs);
  // The closed form (double) against PyTorch's recursion: equal to rounding, for 3 T_max epochs.
  check_schedule([](int e) { return cosine_lr(0.1, 0.0, 50, e); }, torch_lrs(file, "cosine_t50", 150), 1e-15, "T_max 50");
  check_schedule([](int e) { return cosine_lr(0.1, 0.0, 4, e); }, torch_lrs(file, "cosine_t4", 12), 1e-15, "T_max 4");
  check_schedule([](int e) { return cosine_lr(0.1, 0.01, 4, e); }, torch_lrs(file, "cosine_t4_eta0.01", 12), 1e-15,
                 "T_max 4, eta_min 0.01");
  // Schedule, in float.
  Schedule s{.kind = ScheduleKind::cosine, .base_lr = 0.1f, .t_max = 50};
  check_schedule([&](int e) { return s.lr_at(e); }, torch_lrs(file, "cosine_t50", 150), 1e-8, "Schedule T_max 50");

  // By hand: base at 0 and 2 T_max, half way at T_max / 2, eta_min at T_max and 3 T_max.
  CHECK(cosine_lr(0.1, 0, 50, 0) == 0.1);
  CHECK(cosine_lr(0.1, 0, 50, 25) == doctest::Approx(0.05).epsilon(1e-12));
  CHECK(std::fabs(cosine_lr(0.1, 0, 50, 50)) < 1e-15);
  CHECK(cosine_lr(0.1, 0, 50, 75) == doctest::Approx(0.05).epsilon(1e-12));
  CHECK(cosine_lr(0.1, 0, 50, 100) == doctest::Approx(0.1).epsilon(1e-12));
  CHECK(cosine_lr(0.1, 0.02, 50, 150) == doctest::Approx(0.02).epsilon(1e-12));
  CHECK(cosine_lr(0.1, 0.02, 4, 2) == doctest::Approx(0.06).epsilon(1e-12));
}

TEST_CASE("step decay matches StepLR") {
  st::File file = st::load(kRefs);
  check_schedule([](int e) { return step_lr(0.1, 0.5, 3, e); }, torch_lrs(file, "step_s3_g0.5", 10), 1e-15, "StepLR");
  Schedule s{.kind = ScheduleKind::step, .base_lr = 0.1f, .step_size = 3, .gamma = 0.5f};
  check_schedule([&](int e) { return s.lr_at(e); }, torch_lrs(file, "step_s3_g0.5", 10), 1e-8, "Schedule step");
  CHECK(step_lr(0.1, 0.1, 30, 29) == 0.1);
  CHECK(step_lr(0.1, 0.1, 30, 30) == doctest::Approx(0.01).epsilon(1e-12));
  CHECK(step_lr(0.1, 0.1, 30, 65) == doctest::Approx(0.001).epsilon(1e-12));
}

TEST_CASE("linear warm-up matches LinearLR, and then the schedule restarts as in SequentialLR") {
  st::File file = st::load(kRefs);
  check_schedule([](int e) { return warmup_lr(0.1, 5, e); }, torch_lrs(file, "warmup5", 10), 1e-15, "LinearLR");
  CHECK(warmup_lr(0.1, 4, 0) == doctest::Approx(0.025).epsilon(1e-12));
  CHECK(warmup_lr(0.1, 4, 3) == doctest::Approx(0.1).epsilon(1e-12));

  Schedule cos{.kind = ScheduleKind::cosine, .base_lr = 0.1f, .t_max = 10, .warmup_epochs = 5};
  check_schedule([&](int e) { return cos.lr_at(e); }, torch_lrs(file, "warmup5_cosine10", 25), 1e-8, "warm-up + cosine");
  Schedule step{.kind = ScheduleKind::step, .base_lr = 0.1f, .step_size = 2, .gamma = 0.1f, .warmup_epochs = 3};
  check_schedule([&](int e) { return step.lr_at(e); }, torch_lrs(file, "warmup3_step_s2_g0.1", 10), 1e-8,
                 "warm-up + step");
  Schedule constant{.base_lr = 0.1f, .warmup_epochs = 5};
  check_schedule([&](int e) { return constant.lr_at(e); }, torch_lrs(file, "warmup5", 10), 1e-8, "warm-up + constant");
  CHECK(Schedule{.base_lr = 0.3f}.lr_at(7) == 0.3f);
}

TEST_CASE("schedules reject bad settings") {
  CHECK_THROWS_WITH_AS(cosine_lr(0.1, 0, 0, 1), doctest::Contains("t_max must be positive"), std::runtime_error);
  CHECK_THROWS_WITH_AS(step_lr(0.1, 0.1, 0, 1), doctest::Contains("step_size must be positive"), std::runtime_error);
  CHECK_THROWS_WITH_AS(Schedule{}.lr_at(-1), doctest::Contains("negative epoch -1"), std::runtime_error);
  CHECK_THROWS_WITH_AS((Schedule{.kind = ScheduleKind::cosine}.lr_at(3)), doctest::Contains("t_max must be positive"),
                       std::runtime_error);
}

TEST_CASE("the CPU allocator: a tensor beyond the memory is a clear error, and the allocator goes on" *
          skip_unless(!kSanitized, "the allocator's out-of-memory error: AddressSanitizer aborts on a 4 PB "
                                          "allocation instead of returning null")) {
  const AllocStats before = alloc_stats();
  CHECK_THROWS_WITH_AS(Tensor::empty({1000000, 1000000, 1000}),  // 4 PB: the bare std::bad_alloc before
                       doctest::Contains("out of memory: a tensor of 4000000.00 GB could not be allocated"), std::runtime_error);
  CHECK(alloc_stats().bytes_in_use == before.bytes_in_use);
  CHECK(Tensor::zeros({3}).to_vector() == std::vector<float>{0, 0, 0});
}
