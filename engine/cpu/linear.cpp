// Fully connected kernels on oneDNN's inner product: forward, backward-data and backward-weights, each
// built once per shape and cached (dnnl.h). x [N, I], w [O, I], b [O], y [N, O]: oneDNN's nc, oi, x and nc
// layouts are ours, so no reorder runs.
#include "engine/cpu/dnnl.h"
#include "engine/kernels.h"

namespace engine::cpu {

using dnnl::memory;
using tag = memory::format_tag;

enum LinearOp : int64_t { linear_forward_op = 1001, linear_backward_data_op, linear_backward_weight_op };

static DnnlKey linear_key(LinearOp op, const LinearShape& s) { return {op, s.n, s.i, s.o, s.bias}; }

struct LinearDescs {
  memory::desc x, w, b, y;  // b is empty without bias
};

static LinearDescs linear_descs(const LinearShape& s) {
  auto md = [](memory::dims dims, tag t) { return memory::desc(dims, memory::data_type::f32, t); };
  return {md({s.n, s.i}, tag::nc), md({s.o, s.i}, tag::oi), s.bias ? md({s.o}, tag::x) : memory::desc(),
          md({s.n, s.o}, tag::nc)};
}

// Also the hint for the backward primitives.
static dnnl::inner_product_forward::primitive_desc forward_pd(const LinearShape& s) {
  LinearDescs d = linear_descs(s);
  dnnl::inner_product_forward::desc desc(dnnl::prop_kind::forward_training, d.x, d.w, d.b, d.y);
  return {desc, dnnl_attr(), dnnl_engine()};
}

// y = x wᵀ + b
void linear_forward(const LinearShape& s, const float* x, const float* w, const float* b, float* y) {
  DnnlCall& call = dnnl_call(linear_key(linear_forward_op, s), [&] {
    LinearDescs d = linear_descs(s);
    std::vector<DnnlArg> args = {{DNNL_ARG_SRC, d.x, false}, {DNNL_ARG_WEIGHTS, d.w, false}};
    if (s.bias) args.push_back({DNNL_ARG_BIAS, d.b, false});
    args.push_back({DNNL_ARG_DST, d.y, true});
    return DnnlCall(forward_pd(s), args);
  });
  if (s.bias) call.run({x, w, b, y});
  else call.run({x, w, y});
}

// gx = gy w, gw = gyᵀ x, gb = gy summed over N; each only when its pointer is not null.
void linear_backward(const LinearShape& shape, const float* x, const float* w, const float* gy, float* gx,
                     float* gw, float* gb) {
  if (gx) {
    LinearShape s = shape;
    s.bias = false;  // one primitive serves layers with and without bias
    DnnlCall& call = dnnl_call(linear_key(linear_backward_data_op, s), [&] {
      LinearDescs d = linear_descs(s);
      dnnl::inner_product_backward_data::desc desc(d.x, d.w, d.y);
      dnnl::inner_product_backward_data::primitive_desc pd(desc, dnnl_attr(), dnnl_engine(), forward_pd(s));
      return DnnlCall(pd, {{DNNL_ARG_DIFF_DST, d.y, false}, {DNNL_ARG_WEIGHTS, d.w, false}, {DNNL_ARG_DIFF_SRC, d.x, true}});
    });
    call.run({gy, w, gx});
  }
  if (gw || gb) {
    LinearShape s = shape;
    s.bias = gb != nullptr;
    Tensor unused;  // the primitive computes gw with gb: a frozen weight's goes to a temporary
    if (!gw) {
      unused = Tensor::empty({s.o, s.i});
      gw = unused.f32();
    }
    DnnlCall& call = dnnl_call(linear_key(linear_backward_weight_op, s), [&] {
      LinearDescs d = linear_descs(s);
      dnnl::inner_product_backward_weights::desc desc(d.x, d.w, d.b, d.y);
      dnnl::inner_product_backward_weights::primitive_desc pd(desc, dnnl_attr(), dnnl_engine(), forward_pd(s));
      std::vector<DnnlArg> args = {{DNNL_ARG_SRC, d.x, false}, {DNNL_ARG_DIFF_DST, d.y, false},
                                   {DNNL_ARG_DIFF_WEIGHTS, d.w, true}};
      if (s.bias) args.push_back({DNNL_ARG_DIFF_BIAS, d.b, true});
      return DnnlCall(pd, args);
    });
    if (s.bias) call.run({x, gy, gw, gb});
    else call.run({x, gy, gw});
  }
}

}  // namespace engine::cpu
