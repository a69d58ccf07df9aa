// Fake quantization with a learned step (ops.h fake_quantize) and the straight-through op: forward and
// backward side by side.
// Kernels: engine/cpu/quantize.cpp, engine/cuda/quantize.cu.
#include <fmt/format.h>

#include <cmath>
#include <stdexcept>

#include "engine/autograd.h"
#include "engine/kernels.h"
#include "engine/ops.h"

namespace engine {

Tensor fake_quantize(const Tensor& x, const Tensor& step, int zero_point, int q_min, int q_max, float step_grad_scale) {
  ENGINE_CHECK(x.defined() && x.dtype() == DType::f32 && x.dim() >= 1, "expects an f32 tensor, got " + x.str());
  ENGINE_CHECK(step.dtype() == DType::f32 && step.dim() == 1 && (step.numel() == 1 || step.numel() == x.size(0)) &&
                   step.device() == x.device(),
               "step " + step.str() + " for x " + x.str() + ": expected [1] or [" + std::to_string(x.size(0)) + "]");
  ENGINE_CHECK(q_min < q_max && zero_point >= q_min && zero_point <= q_max,
               "codes [" + std::to_string(q_min) + ", " + std::to_string(q_max) + "] with zero point " + std::to_string(zero_point));
  FakeQuant q{step.numel(), x.numel() / step.numel(), zero_point, q_min, q_max};
  // Rows are dim 0, the outermost in either layout: y (and gx) in x's.
  Tensor y = empty_like(x);
  if (x.numel() > 0) DISPATCH(x.device(), fake_quant_forward, q, x.storage_f32(), step.f32(), y.storage_f32());
  record(y, "fake_quantize", {x, step}, [q, step_grad_scale](const Tensor& out, const Tensor& gy) {
    const Tensor& x = out.grad_fn()->inputs[0];
    const Tensor& step = out.grad_fn()->inputs[1];
    Tensor gx = empty_like(x);
    Tensor terms = empty_like(x);
    if (x.numel() > 0) DISPATCH(x.device(), fake_quant_backward, q, x.storage_f32(), step.f32(), gy.storage_f32(), gx.storage_f32(), terms.storage_f32());
    accumulate_grad(x, gx);
    if (step.requires_grad()) {
      Tensor gs = Tensor::empty(step.shape(), DType::f32, x.device());
      DISPATCH(x.device(), reduce_sum, Reduce3{q.rows, q.per_row, 1}, terms.storage_f32(), gs.f32());
      scale_(gs, step_grad_scale);
      accumulate_grad(step, gs);
    }
  });
  return y;
}

Tensor straight_through(const Tensor& x, const Tensor& values_in) {
  const Tensor values = x.defined() && values_in.defined() ? to_layout(values_in, x.channel_block()) : values_in;
  ENGINE_CHECK(x.defined() && values.defined() && x.shape() == values.shape() && x.dtype() == values.dtype() &&
                   x.device() == values.device(),
               "straight_through: values " + values.str() + " for x " + x.str());
  Tensor y = values.detach();
  record(y, "straight_through", {x}, [](const Tensor& out, const Tensor& gy) { accumulate_grad(out.grad_fn()->inputs[0], gy); });
  return y;
}

BiasCodes bias_codes(const std::vector<float>& v, float s_x, const std::vector<float>& s_w, const std::string& name) {
  ENGINE_CHECK(s_w.size() == 1 || s_w.size() == v.size(),
               name + ": " + std::to_string(s_w.size()) + " weight steps for " + std::to_string(v.size()) + " output channels");
  BiasCodes c;
  for (size_t o = 0; o < v.size(); o++) {
    const float t = s_x * s_w[s_w.size() == 1 ? 0 : o];
    const double code = std::nearbyint((double)v[o] / t);
    if (!(std::fabs(code) < 2147483647.0))  // a user's message (the bit widths or the steps are too fine): no function name
      throw std::runtime_error(fmt::format("{}[{}] = {:g} is beyond int32 codes of step {:g} (the input's step {:g} "
                                           "times the weight's): too many bits for an int32 accumulator", name, o, v[o], t, s_x));
    c.codes.push_back((int32_t)code);
    c.steps.push_back(t);
  }
  return c;
}

}  // namespace engine
