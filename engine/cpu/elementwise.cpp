// CPU kernels for element-wise and broadcast ops, threaded with OpenMP (static schedules, so results
// do not depend on timing). The per-element math is in engine/scalar_math.h, shared with engine/cuda/.
#include "engine/kernels.h"
#include "engine/scalar_math.h"

namespace engine::cpu {

void fill(float* y, int64_t n, float value) {
#pragma omp parallel for simd schedule(static) if (n > 32768)
  for (int64_t i = 0; i < n; i++) y[i] = value;
}

template <class F>
static void map1(const float* x, float* y, int64_t n, F f) {
#pragma omp parallel for simd schedule(static) if (n > 32768)
  for (int64_t i = 0; i < n; i++) y[i] = f(x[i]);
}

void unary_forward(UnaryOp op, const float* x, float* y, int64_t n, float p0, float p1) {
  with_unary_op(op, [&](auto tag) {
    constexpr UnaryOp o = decltype(tag)::value;
    map1(x, y, n, [=](float v) { return unary_value<o>(v, p0, p1); });
  });
}

template <class F>
static void map3(const float* x, const float* y, const float* gy, float* gx, int64_t n, F f) {
#pragma omp parallel for simd schedule(static) if (n > 32768)
  for (int64_t i = 0; i < n; i++) gx[i] = f(x[i], y[i], gy[i]);
}

void unary_backward(UnaryOp op, const float* x, const float* y, const float* gy, float* gx, int64_t n,
                    float p0, float p1) {
  with_unary_op(op, [&](auto tag) {
    constexpr UnaryOp o = decltype(tag)::value;
    map3(x, y, gy, gx, n, [=](float a, float b, float g) { return unary_grad<o>(a, b, g, p0, p1); });
  });
}

template <class F>
static void broadcast_loop(const Broadcast& b, const float* x, const float* z, float* y, F f) {
  int64_t total = 1;
  for (int i = 0; i < b.n; i++) total *= b.out[i];
  if (total == 0) return;
  int last = b.n - 1;
  int64_t inner = b.n ? b.out[last] : 1;
  int64_t sxi = b.n ? b.sa[last] : 0, szi = b.n ? b.sb[last] : 0;
  int64_t rows = total / inner;
#pragma omp parallel for schedule(static) if (total > 32768)
  for (int64_t r = 0; r < rows; r++) {
    // r indexes the outer dims [0, last); find the inputs' offsets for that row.
    int64_t rem = r, ox = 0, oz = 0;
    for (int d = last - 1; d >= 0; d--) {
      int64_t i = rem % b.out[d];
      rem /= b.out[d];
      ox += i * b.sa[d];
      oz += i * b.sb[d];
    }
    const float* xr = x + ox;
    const float* zr = z + oz;
    float* yr = y + r * inner;
    if (sxi == 1 && szi == 1) {
#pragma omp simd
      for (int64_t i = 0; i < inner; i++) yr[i] = f(xr[i], zr[i]);
    } else {
      for (int64_t i = 0; i < inner; i++) yr[i] = f(xr[i * sxi], zr[i * szi]);
    }
  }
}

template <BinaryOp op>
static void binary_loop(const Broadcast& b, const float* x, const float* z, float* y) {
  broadcast_loop(b, x, z, y, [](float p, float q) { return binary_value<op>(p, q); });
}

void binary_forward(BinaryOp op, const Broadcast& b, const float* x, const float* z, float* y) {
  switch (op) {
    case BinaryOp::add: return binary_loop<BinaryOp::add>(b, x, z, y);
    case BinaryOp::sub: return binary_loop<BinaryOp::sub>(b, x, z, y);
    case BinaryOp::mul: return binary_loop<BinaryOp::mul>(b, x, z, y);
    case BinaryOp::div: return binary_loop<BinaryOp::div>(b, x, z, y);
  }
}

void axpy(float* y, float alpha, const float* x, int64_t n) {
#pragma omp parallel for simd schedule(static) if (n > 32768)
  for (int64_t i = 0; i < n; i++) y[i] += alpha * x[i];
}

void scale(float* x, float s, int64_t n) {
#pragma omp parallel for simd schedule(static) if (n > 32768)
  for (int64_t i = 0; i < n; i++) x[i] *= s;
}

}  // namespace engine::cpu
