// CPU kernels for element-wise and broadcast ops, threaded with OpenMP (static schedules, so results
// do not depend on timing). The per-element math is in engine/scalar_math.h, shared with engine/cuda/.
#include <algorithm>
#include <type_traits>

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

// b with its size-1 dims dropped and each run of adjacent dims that both inputs step through alike (both
// contiguous across them, or both broadcast along them) merged into one: a same-shape op becomes one row,
// x [N, C, H, W] + b [1, C, 1, 1] rows of H * W with a constant b per row.
static Broadcast merge_dims(const Broadcast& b) {
  Broadcast m;
  for (int i = 0; i < b.n; i++) {
    if (b.out[i] == 1) continue;
    int k = m.n - 1;
    if (k >= 0 && b.sa[i] * b.out[i] == m.sa[k] && b.sb[i] * b.out[i] == m.sb[k]) {
      m.out[k] *= b.out[i];  // dim i is contiguous with (or broadcast like) the one before: merge
      m.sa[k] = b.sa[i];
      m.sb[k] = b.sb[i];
    } else {
      m.out[m.n] = b.out[i];
      m.sa[m.n] = b.sa[i];
      m.sb[m.n] = b.sb[i];
      m.n++;
    }
  }
  return m;
}

// y = f(x, z) over the merged broadcast, in pieces of at most ~16k elements of a row (so that one long row
// is threaded too). The innermost dim has stride 1 or 0 in each input: four vectorizable loops.
template <class F>
static void broadcast_loop(const Broadcast& full, const float* x, const float* z, float* y, F f) {
  const Broadcast b = merge_dims(full);
  int64_t total = 1;
  for (int i = 0; i < full.n; i++) total *= full.out[i];
  if (total == 0) return;
  const int last = b.n - 1;
  const int64_t inner = b.n ? b.out[last] : 1;
  const int64_t sxi = b.n ? b.sa[last] : 0, szi = b.n ? b.sb[last] : 0;
  const int64_t rows = total / inner, pieces = (inner + 16383) / 16384, piece = (inner + pieces - 1) / pieces;
#pragma omp parallel for schedule(static) if (total > 32768)
  for (int64_t w = 0; w < rows * pieces; w++) {
    // w is piece w % pieces of row r; r indexes the outer dims [0, last): the inputs' offsets for that row.
    const int64_t r = w / pieces, i0 = w % pieces * piece, len = std::min(piece, inner - i0);
    int64_t rem = r, ox = 0, oz = 0;
    for (int d = last - 1; d >= 0; d--) {
      int64_t i = rem % b.out[d];
      rem /= b.out[d];
      ox += i * b.sa[d];
      oz += i * b.sb[d];
    }
    const float* xr = x + ox + i0 * sxi;
    const float* zr = z + oz + i0 * szi;
    float* yr = y + r * inner + i0;
    auto run = [&](auto sx, auto sz) {
#pragma omp simd
      for (int64_t i = 0; i < len; i++) yr[i] = f(xr[i * sx], zr[i * sz]);
    };
    using one = std::integral_constant<int64_t, 1>;
    using zero = std::integral_constant<int64_t, 0>;
    if (sxi == 1 && szi == 1) run(one{}, one{});
    else if (sxi == 1 && szi == 0) run(one{}, zero{});
    else if (sxi == 0 && szi == 1) run(zero{}, one{});
    else if (sxi == 0 && szi == 0) run(zero{}, zero{});
    else run(sxi, szi);
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

void pad2d_forward(int64_t planes, int64_t h, int64_t w, int pad_h, int pad_w, const float* x, float* y) {
  const int64_t ph = h + 2 * pad_h, pw = w + 2 * pad_w;
#pragma omp parallel for schedule(static) if (planes * ph * pw > 32768)
  for (int64_t p = 0; p < planes; p++)
    for (int64_t i = 0; i < ph; i++)
      for (int64_t j = 0; j < pw; j++) {
        const int64_t si = i - pad_h, sj = j - pad_w;
        const bool inside = si >= 0 && si < h && sj >= 0 && sj < w;
        y[(p * ph + i) * pw + j] = inside ? x[(p * h + si) * w + sj] : 0.f;
      }
}

void pad2d_backward(int64_t planes, int64_t h, int64_t w, int pad_h, int pad_w, const float* gy, float* gx) {
  const int64_t ph = h + 2 * pad_h, pw = w + 2 * pad_w;
#pragma omp parallel for schedule(static) if (planes * h * w > 32768)
  for (int64_t p = 0; p < planes; p++)
    for (int64_t i = 0; i < h; i++)
      for (int64_t j = 0; j < w; j++) gx[(p * h + i) * w + j] = gy[(p * ph + i + pad_h) * pw + j + pad_w];
}

}  // namespace engine::cpu
