// Fused ops of the RepVGG block (ops.h), forward and backward side by side. Kernels: engine/cpu/fused.cpp,
// engine/cuda/fused.cu.
#include "engine/autograd.h"
#include "engine/kernels.h"
#include "engine/ops.h"

namespace engine {

static float* f32_or_null(const Tensor& t) { return t.defined() ? t.storage_f32() : nullptr; }

// An f32 tensor of t's shape and layout when t needs a gradient, else undefined.
static Tensor grad_buffer(const Tensor& t) { return t.requires_grad() ? empty_like(t) : Tensor(); }

// --- y = relu(Σ_b BN_b(x_b)), or the sum alone -------------------------------------------------------

static void check_param(const Tensor& p, const char* name, int64_t c, Device device) {
  ENGINE_CHECK(p.defined() && p.dtype() == DType::f32 && p.shape() == Shape{c} && p.device() == device,
               std::string(name) + " must be f32 [" + std::to_string(c) + "] on " + device_name(device) + ", got " +
                   (p.defined() ? p.str() : "undefined"));
}

// xs[b] [N, C, H, W], each BN's tensors [C] -> y [N, C, H, W] in xs[0]'s layout.
Tensor bn_add_relu(const std::vector<Tensor>& xs_in, const std::vector<BnParams>& bns, bool training, float momentum,
                   float eps, bool relu) {
  const int count = (int)xs_in.size();
  ENGINE_CHECK(count >= 1 && count <= 3 && bns.size() == xs_in.size(),
               "1 to 3 branches, each with its BN; got " + std::to_string(xs_in.size()) + " inputs and " +
                   std::to_string(bns.size()) + " BNs");
  const Tensor& x0 = xs_in[0];
  ENGINE_CHECK(x0.defined() && x0.dtype() == DType::f32 && x0.dim() == 4,
               "x must be f32 [N, C, H, W], got " + (x0.defined() ? x0.str() : "undefined"));
  std::vector<Tensor> xs = xs_in;
  for (Tensor& x : xs)
    if (x.defined() && x.shape() == x0.shape()) x = to_layout(x, x0.channel_block());
  BnSum s;
  s.n = x0.size(0);
  s.c = x0.size(1);
  s.hw = x0.size(2) * x0.size(3);
  s.block = x0.channel_block();
  s.count = count;
  s.relu = relu;
  ENGINE_CHECK(!training || s.n * s.hw > 1, "training needs more than one value per channel, got x " + x0.str());
  ENGINE_CHECK(!training || !batch_norm_sync() || x0.device() == Device::cpu, "sync-BN is CPU only, got x " + x0.str());
  Tensor y = empty_like(x0);

  // The statistics that normalize, kept for the backward: the batch ones (training), or the running ones
  // (eval: they must not change before the backward runs, as in batch_norm2d).
  std::vector<Tensor> means(count), vars(count), inputs = xs;
  for (int k = 0; k < count; k++) {
    const Tensor& x = xs[k];
    const BnParams& bn = bns[k];
    ENGINE_CHECK(x.defined() && x.dtype() == DType::f32 && x.shape() == x0.shape() && x.device() == x0.device(),
                 "branch " + std::to_string(k) + " is " + (x.defined() ? x.str() : "undefined") + ", branch 0 " + x0.str());
    check_param(bn.gamma, "gamma", s.c, x0.device());
    check_param(bn.beta, "beta", s.c, x0.device());
    check_param(bn.running_mean, "running_mean", s.c, x0.device());
    check_param(bn.running_var, "running_var", s.c, x0.device());
    means[k] = training ? Tensor::empty({s.c}, DType::f32, x0.device()) : bn.running_mean;
    vars[k] = training ? Tensor::empty({s.c}, DType::f32, x0.device()) : bn.running_var;
    s.b[k] = {x.storage_f32(), bn.gamma.f32(), bn.beta.f32(), bn.running_mean.f32(), bn.running_var.f32(),
              means[k].f32(), vars[k].f32()};
    inputs.push_back(bn.gamma);
    inputs.push_back(bn.beta);
  }
  DISPATCH(x0.device(), bn_sum_relu_forward, s, training, momentum, eps, y.storage_f32());

  // inputs: x_0 .. x_{count-1}, then gamma_k, beta_k per branch
  record(y, "bn_add_relu", std::move(inputs), [s, training, eps, means, vars](const Tensor& out, const Tensor& gout) {
    const auto& in = out.grad_fn()->inputs;
    const int count = s.count;
    BnSum g = s;
    std::vector<Tensor> gx(count), ggamma(count), gbeta(count);
    for (int k = 0; k < count; k++) {
      const Tensor &x = in[k], &gamma = in[count + 2 * k], &beta = in[count + 2 * k + 1];
      gx[k] = grad_buffer(x);
      ggamma[k] = grad_buffer(gamma);
      gbeta[k] = grad_buffer(beta);
      g.b[k] = {x.storage_f32(), gamma.f32(), nullptr, nullptr, nullptr, means[k].f32(), vars[k].f32(),
                f32_or_null(gx[k]), f32_or_null(ggamma[k]), f32_or_null(gbeta[k])};
    }
    DISPATCH(out.device(), bn_sum_relu_backward, g, training, eps, out.storage_f32(), gout.storage_f32());
    for (int k = 0; k < count; k++) {
      accumulate_grad(in[k], gx[k]);
      accumulate_grad(in[count + 2 * k], ggamma[k]);
      accumulate_grad(in[count + 2 * k + 1], gbeta[k]);
    }
  });
  return y;
}

}  // namespace engine
