// Sums and means over chosen dims, global average pooling and sum_to (the gradient of broadcasting).
// Kernels: engine/cpu/reduce.cpp. A set of dims is reduced one contiguous run at a time.
#include <algorithm>

#include "engine/autograd.h"
#include "engine/kernels.h"
#include "engine/ops.h"

namespace engine {

// Sum of x over `dims` keeping them as size 1 (no autograd).
static Tensor sum_keepdim_raw(const Tensor& x, std::vector<int> dims) {
  const Shape& s = x.shape();
  for (int& d : dims) {
    if (d < 0) d += s.n;
    ENGINE_CHECK(d >= 0 && d < s.n, "dim out of range for " + s.str());
  }
  std::sort(dims.begin(), dims.end());
  dims.erase(std::unique(dims.begin(), dims.end()), dims.end());
  Tensor cur = x;
  // Reduce the runs of consecutive dims from the last run to the first.
  for (int k = (int)dims.size() - 1; k >= 0;) {
    int hi = dims[k], lo = hi;
    while (k > 0 && dims[k - 1] == lo - 1) lo = dims[--k];
    k--;
    const Shape& cs = cur.shape();
    Reduce3 r;
    for (int i = 0; i < lo; i++) r.outer *= cs.d[i];
    for (int i = lo; i <= hi; i++) r.mid *= cs.d[i];
    for (int i = hi + 1; i < cs.n; i++) r.inner *= cs.d[i];
    Shape out = cs;
    for (int i = lo; i <= hi; i++) out.d[i] = 1;
    Tensor y = Tensor::empty(out, DType::f32, x.device());
    DISPATCH(x.device(), reduce_sum, r, cur.f32(), y.f32());
    cur = y;
  }
  return cur.same(x) ? x.clone() : cur;
}

// g (x's shape with reduced dims kept as 1) broadcast back to `shape`, times s.
static Tensor expand_raw(const Tensor& g, const Shape& shape, float s) {
  Tensor scalar = Tensor::full(Shape{}, s, g.device());
  Broadcast b;
  b.n = shape.n;
  int64_t stride = 1;
  for (int i = shape.n - 1; i >= 0; i--) {
    b.out[i] = shape.d[i];
    b.sa[i] = g.shape().d[i] == 1 ? 0 : stride;
    stride *= g.shape().d[i];
  }
  Tensor y = Tensor::empty(shape, DType::f32, g.device());
  DISPATCH(g.device(), binary_forward, BinaryOp::mul, b, g.f32(), scalar.f32(), y.f32());
  return y;
}

static Shape drop_dims(const Shape& keep, const Shape& in, const std::vector<int>& dims) {
  Shape out;
  for (int i = 0; i < in.n; i++) {
    bool reduced = false;
    for (int d : dims) reduced |= (d < 0 ? d + in.n : d) == i;
    if (!reduced) out.d[out.n++] = keep.d[i];
  }
  return out;
}

// A blocked x [N, C, H, W] (ops.h, the activation layout) reduced over H and W (and N), not C, is reduced
// as the [N, C/B, H, W, B] its storage is: the result, [N or 1, C/B, 1, 1, B], holds the channels in
// NCHW's order. These dims of that view, or none (then x goes NCHW first).
static std::vector<int> blocked_dims(const Tensor& x, std::vector<int> dims) {
  if (x.channel_block() == 0) return {};
  for (int& d : dims) d = d < 0 ? d + 4 : d;
  auto has = [&](int d) { return std::find(dims.begin(), dims.end(), d) != dims.end(); };
  if (!has(2) || !has(3) || has(1)) return {};
  return dims;  // 0, 2, 3 are the same dims of the 5-D view
}

// The 5-D view [N, C/B, H, W, B] of a blocked tensor's storage (no autograd).
static Tensor blocked_view(const Tensor& x) {
  const int64_t b = x.channel_block();
  Tensor storage = x.detach();
  storage.impl()->channel_block = 0;
  return view_as_shape(storage, Shape{x.size(0), x.size(1) / b, x.size(2), x.size(3), b});
}

static Tensor reduce(const Tensor& x_in, const std::vector<int>& dims, bool keepdim, bool is_mean, const char* name) {
  const std::vector<int> bdims = blocked_dims(x_in, dims);
  const Tensor x = bdims.empty() ? to_plain(x_in) : x_in;
  Tensor y = bdims.empty() ? sum_keepdim_raw(x, dims) : sum_keepdim_raw(blocked_view(x), bdims);
  float s = is_mean ? (float)y.numel() / (float)std::max<int64_t>(x.numel(), 1) : 1.f;
  if (is_mean) scale_(y, s);
  Shape keep_shape = y.shape();
  if (!bdims.empty()) {  // [N or 1, C/B, 1, 1, B] -> [N or 1, C, 1, 1]
    keep_shape = x.shape();
    for (int d : bdims) keep_shape.d[d] = 1;
  }
  y = view_as_shape(y, keepdim ? keep_shape : drop_dims(keep_shape, x.shape(), dims));
  const int64_t block = bdims.empty() ? 0 : x.channel_block();
  record(y, name, {x}, [keep_shape, s, block](const Tensor& out, const Tensor& g) {
    const Tensor& x = out.grad_fn()->inputs[0];
    if (block == 0) return accumulate_grad(x, expand_raw(view_as_shape(g, keep_shape), x.shape(), s));
    // g [N or 1, C] broadcast over the 5-D view of gx, which is then x's blocked storage
    const Shape view{x.size(0), x.size(1) / block, x.size(2), x.size(3), block};
    const Shape g_view{keep_shape[0], x.size(1) / block, 1, 1, block};
    Tensor gx = expand_raw(view_as_shape(g, g_view), view, s);
    gx = view_as_shape(gx, x.shape());
    gx.impl()->channel_block = block;
    accumulate_grad(x, gx);
  });
  return y;
}

Tensor sum(const Tensor& x, const std::vector<int>& dims, bool keepdim) { return reduce(x, dims, keepdim, false, "sum"); }
Tensor mean(const Tensor& x, const std::vector<int>& dims, bool keepdim) { return reduce(x, dims, keepdim, true, "mean"); }

static std::vector<int> all_dims(const Tensor& x) {
  std::vector<int> d(x.dim());
  for (int i = 0; i < x.dim(); i++) d[i] = i;
  return d;
}
Tensor sum_all(const Tensor& x) { return reduce(x, all_dims(x), false, false, "sum_all"); }
Tensor mean_all(const Tensor& x) { return reduce(x, all_dims(x), false, true, "mean_all"); }

// Blocked x too (reduce's blocked_dims).
Tensor global_avg_pool(const Tensor& x) {
  ENGINE_CHECK(x.dim() == 4, "expects [N, C, H, W], got " + x.shape().str());
  return reduce(x, {2, 3}, false, true, "global_avg_pool");
}

Tensor sum_to(const Tensor& x, const Shape& shape) {
  if (x.shape() == shape) return x;
  const Shape& s = x.shape();
  ENGINE_CHECK(shape.n <= s.n, "cannot sum " + s.str() + " to " + shape.str());
  std::vector<int> dims;
  int lead = s.n - shape.n;
  for (int i = 0; i < s.n; i++)
    if (i < lead || (shape.d[i - lead] == 1 && s.d[i] != 1)) dims.push_back(i);
  Tensor y = dims.empty() ? x : sum(x, dims, true);
  return reshape(y, shape);
}

}  // namespace engine
