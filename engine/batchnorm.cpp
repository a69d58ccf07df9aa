// Batch normalization of x [N, C, H, W] per channel (as torch.nn.BatchNorm2d), training and eval modes:
// forward and backward side by side. Kernels: engine/cpu/batchnorm.cpp.
#include "engine/autograd.h"
#include "engine/kernels.h"
#include "engine/ops.h"

namespace engine {

static BatchSumFn g_sync = nullptr;
void set_batch_norm_sync(BatchSumFn sum) { g_sync = sum; }
BatchSumFn batch_norm_sync() { return g_sync; }

static void check_channel_param(const Tensor& p, const char* name, const Tensor& x) {
  ENGINE_CHECK(p.defined(), std::string(name) + " is undefined");
  ENGINE_CHECK(p.dtype() == DType::f32 && p.shape() == Shape{x.size(1)} && p.device() == x.device(),
               std::string(name) + " must be f32 [" + std::to_string(x.size(1)) + "] on " +
                   device_name(x.device()) + " for x " + x.str() + ", got " + p.str());
}

static float* f32_or_null(const Tensor& t) { return t.defined() ? t.storage_f32() : nullptr; }

// An f32 tensor of t's shape and layout when t needs a gradient, else undefined.
static Tensor grad_buffer(const Tensor& t) { return t.requires_grad() ? empty_like(t) : Tensor(); }

Tensor batch_norm2d(const Tensor& x_in, const Tensor& gamma, const Tensor& beta, const Tensor& running_mean,
                    const Tensor& running_var, bool training, float momentum, float eps, BatchStats* stats) {
  ENGINE_CHECK(x_in.defined() && x_in.dim() == 4 && x_in.dtype() == DType::f32,
               "expects x f32 [N, C, H, W], got " + (x_in.defined() ? x_in.str() : "undefined"));
  const Tensor x = to_plain(x_in);  // the kernels' planes are NCHW's
  check_channel_param(gamma, "gamma", x);
  check_channel_param(beta, "beta", x);
  check_channel_param(running_mean, "running_mean", x);
  check_channel_param(running_var, "running_var", x);
  BnShape s{x.size(0), x.size(1), x.size(2) * x.size(3)};
  Tensor y = Tensor::empty(x.shape(), DType::f32, x.device());

  if (!training) {
    // y = (x - running_mean) / sqrt(running_var + eps) * gamma + beta
    DISPATCH(x.device(), bn_eval_forward, s, x.f32(), gamma.f32(), beta.f32(), running_mean.f32(),
             running_var.f32(), eps, y.f32());
    if (stats) *stats = BatchStats{};  // no batch statistics in eval mode
    // The backward reads the running statistics: they must not change before it runs.
    record(y, "batch_norm2d_eval", {x, gamma, beta, running_mean, running_var},
           [s, eps](const Tensor& out, const Tensor& gout) {
             const auto& in = out.grad_fn()->inputs;
             Tensor gx = grad_buffer(in[0]), ggamma = grad_buffer(in[1]), gbeta = grad_buffer(in[2]);
             DISPATCH(out.device(), bn_eval_backward, s, in[0].f32(), in[1].f32(), in[3].f32(), in[4].f32(), eps,
                      gout.f32(), f32_or_null(gx), f32_or_null(ggamma), f32_or_null(gbeta));
             accumulate_grad(in[0], gx);
             accumulate_grad(in[1], ggamma);
             accumulate_grad(in[2], gbeta);
           });
    return y;
  }

  ENGINE_CHECK(s.n * s.hw > 1, "training needs more than one value per channel, got x " + x.str());
  ENGINE_CHECK(!g_sync || x.device() == Device::cpu, "sync-BN is CPU only, got x " + x.str());
  // mean, var [C]: the batch mean and biased variance; y = (x - mean) / sqrt(var + eps) * gamma + beta.
  Tensor mean = Tensor::empty({s.c}, DType::f32, x.device());
  Tensor var = Tensor::empty({s.c}, DType::f32, x.device());
  DISPATCH(x.device(), bn_train_forward, s, x.f32(), gamma.f32(), beta.f32(), running_mean.f32(),
           running_var.f32(), momentum, eps, mean.f32(), var.f32(), y.f32());
  if (stats) *stats = BatchStats{mean, var};  // not differentiable; shared with the backward: do not modify
  record(y, "batch_norm2d_train", {x, gamma, beta}, [s, eps, mean, var](const Tensor& out, const Tensor& gout) {
    const auto& in = out.grad_fn()->inputs;
    Tensor gx = grad_buffer(in[0]), ggamma = grad_buffer(in[1]), gbeta = grad_buffer(in[2]);
    DISPATCH(out.device(), bn_train_backward, s, in[0].f32(), in[1].f32(), mean.f32(), var.f32(), eps, gout.f32(),
             f32_or_null(gx), f32_or_null(ggamma), f32_or_null(gbeta));
    accumulate_grad(in[0], gx);
    accumulate_grad(in[1], ggamma);
    accumulate_grad(in[2], gbeta);
  });
  return y;
}

Tensor channel_mean_var(const Tensor& x) {
  ENGINE_CHECK(x.defined() && x.dtype() == DType::f32 && x.dim() == 4,
               "expects x f32 [N, C, H, W], got " + (x.defined() ? x.str() : "undefined"));
  const BnShape s{x.size(0), x.size(1), x.size(2) * x.size(3), x.channel_block()};
  Tensor moments = Tensor::empty(Shape{2, s.c}, DType::f32, x.device());  // mean, var
  DISPATCH(x.device(), channel_mean_var_forward, s, x.storage_f32(), moments.f32(), moments.f32() + s.c);
  record(moments, "channel_mean_var", {x}, [s](const Tensor& out, const Tensor& g) {
    const Tensor& x = out.grad_fn()->inputs[0];
    Tensor gx = grad_buffer(x);
    if (!gx.defined()) return;
    DISPATCH(x.device(), channel_mean_var_backward, s, x.storage_f32(), out.f32(), g.f32(), g.f32() + s.c, gx.storage_f32());
    accumulate_grad(x, gx);
  });
  return moments;
}

}  // namespace engine
