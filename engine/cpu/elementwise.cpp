// CPU kernels for element-wise and broadcast ops, threaded with OpenMP (static schedules, so results
// do not depend on timing).
#include <cmath>

#include "engine/kernels.h"

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
  switch (op) {
    case UnaryOp::relu: return map1(x, y, n, [](float v) { return v > 0.f ? v : 0.f; });
    case UnaryOp::square: return map1(x, y, n, [](float v) { return v * v; });
    case UnaryOp::sqrt: return map1(x, y, n, [](float v) { return std::sqrt(v); });
    case UnaryOp::rsqrt: return map1(x, y, n, [](float v) { return 1.f / std::sqrt(v); });
    case UnaryOp::clamp: return map1(x, y, n, [=](float v) { return std::fmin(std::fmax(v, p0), p1); });
    case UnaryOp::round: return map1(x, y, n, [](float v) { return std::nearbyint(v); });  // half to even
    case UnaryOp::add_scalar: return map1(x, y, n, [=](float v) { return v + p0; });
    case UnaryOp::mul_scalar: return map1(x, y, n, [=](float v) { return v * p0; });
  }
}

template <class F>
static void map3(const float* x, const float* y, const float* gy, float* gx, int64_t n, F f) {
#pragma omp parallel for simd schedule(static) if (n > 32768)
  for (int64_t i = 0; i < n; i++) gx[i] = f(x[i], y[i], gy[i]);
}

void unary_backward(UnaryOp op, const float* x, const float* y, const float* gy, float* gx, int64_t n,
                    float p0, float p1) {
  switch (op) {
    case UnaryOp::relu: return map3(x, y, gy, gx, n, [](float a, float, float g) { return a > 0.f ? g : 0.f; });
    case UnaryOp::square: return map3(x, y, gy, gx, n, [](float a, float, float g) { return 2.f * a * g; });
    case UnaryOp::sqrt: return map3(x, y, gy, gx, n, [](float, float b, float g) { return g * 0.5f / b; });
    case UnaryOp::rsqrt:  // d x^-1/2 = -1/2 x^-3/2 = -1/2 y^3
      return map3(x, y, gy, gx, n, [](float, float b, float g) { return -0.5f * b * b * b * g; });
    case UnaryOp::clamp:
      return map3(x, y, gy, gx, n, [=](float a, float, float g) { return a >= p0 && a <= p1 ? g : 0.f; });
    case UnaryOp::round:
    case UnaryOp::add_scalar: return map3(x, y, gy, gx, n, [](float, float, float g) { return g; });
    case UnaryOp::mul_scalar: return map3(x, y, gy, gx, n, [=](float, float, float g) { return g * p0; });
  }
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

void binary_forward(BinaryOp op, const Broadcast& b, const float* x, const float* z, float* y) {
  switch (op) {
    case BinaryOp::add: return broadcast_loop(b, x, z, y, [](float p, float q) { return p + q; });
    case BinaryOp::sub: return broadcast_loop(b, x, z, y, [](float p, float q) { return p - q; });
    case BinaryOp::mul: return broadcast_loop(b, x, z, y, [](float p, float q) { return p * q; });
    case BinaryOp::div: return broadcast_loop(b, x, z, y, [](float p, float q) { return p / q; });
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
