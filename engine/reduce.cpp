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

static Tensor reduce(const Tensor& x, const std::vector<int>& dims, bool keepdim, bool is_mean, const char* name) {
  Tensor y = sum_keepdim_raw(x, dims);
  float s = is_mean ? (float)y.numel() / (float)std::max<int64_t>(x.numel(), 1) : 1.f;
  if (is_mean) scale_(y, s);
  Shape keep_shape = y.shape();
  if (!keepdim) y = view_as_shape(y, drop_dims(keep_shape, x.shape(), dims));
  record(y, name, {x}, [keep_shape, s](const Tensor& out, const Tensor& g) {
    const Tensor& x = out.grad_fn()->inputs[0];
    accumulate_grad(x, expand_raw(view_as_shape(g, keep_shape), x.shape(), s));
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
