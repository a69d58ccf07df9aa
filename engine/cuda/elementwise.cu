// CUDA kernels for element-wise and broadcast ops (the CPU ones: engine/cpu/elementwise.cpp). The
// per-element math is shared with the CPU through engine/scalar_math.h.
#include "engine/cuda/common.cuh"
#include "engine/scalar_math.h"

namespace engine::cuda {

__global__ void fill_kernel(float* y, int64_t n, float value) {
  GRID_STRIDE(i, n) y[i] = value;
}

void fill(float* y, int64_t n, float value) {
  if (n > 0) LAUNCH(fill_kernel, blocks_for(n), kThreads, y, n, value);
}

template <UnaryOp op>
__global__ void unary_forward_kernel(const float* x, float* y, int64_t n, float p0, float p1) {
  GRID_STRIDE(i, n) y[i] = unary_value<op>(x[i], p0, p1);
}

void unary_forward(UnaryOp op, const float* x, float* y, int64_t n, float p0, float p1) {
  if (n == 0) return;
  with_unary_op(op, [&](auto tag) {
    constexpr UnaryOp o = decltype(tag)::value;
    LAUNCH(unary_forward_kernel<o>, blocks_for(n), kThreads, x, y, n, p0, p1);
  });
}

template <UnaryOp op>
__global__ void unary_backward_kernel(const float* x, const float* y, const float* gy, float* gx, int64_t n,
                                      float p0, float p1) {
  GRID_STRIDE(i, n) gx[i] = unary_grad<op>(x[i], y[i], gy[i], p0, p1);
}

void unary_backward(UnaryOp op, const float* x, const float* y, const float* gy, float* gx, int64_t n, float p0,
                    float p1) {
  if (n == 0) return;
  with_unary_op(op, [&](auto tag) {
    constexpr UnaryOp o = decltype(tag)::value;
    LAUNCH(unary_backward_kernel<o>, blocks_for(n), kThreads, x, y, gy, gx, n, p0, p1);
  });
}

// Same shapes, no broadcasting.
template <BinaryOp op>
__global__ void binary_same_kernel(int64_t n, const float* x, const float* z, float* y) {
  GRID_STRIDE(i, n) y[i] = binary_value<op>(x[i], z[i]);
}

// Broadcasting: output element i's coordinates give each input's offset through its strides (0 along a
// broadcast dim). I is the index type: 32-bit where the output fits, as 64-bit division is slow on a GPU.
template <BinaryOp op, class I>
__global__ void binary_broadcast_kernel(Broadcast b, int64_t total, const float* x, const float* z, float* y) {
  GRID_STRIDE(i, total) {
    I rem = (I)i, ox = 0, oz = 0;
    for (int d = b.n - 1; d >= 0; d--) {
      const I extent = (I)b.out[d], coord = rem % extent;
      rem /= extent;
      ox += coord * (I)b.sa[d];
      oz += coord * (I)b.sb[d];
    }
    y[i] = binary_value<op>(x[ox], z[oz]);
  }
}

template <BinaryOp op>
static void binary(const Broadcast& b, const float* x, const float* z, float* y) {
  int64_t total = 1;
  bool same = true;  // both inputs laid out as the output
  for (int d = b.n - 1; d >= 0; d--) {
    same &= (b.out[d] == 1 || (b.sa[d] == total && b.sb[d] == total));
    total *= b.out[d];
  }
  if (total == 0) return;
  if (same) {
    LAUNCH(binary_same_kernel<op>, blocks_for(total), kThreads, total, x, z, y);
  } else {
    auto kernel = total < (int64_t(1) << 31) ? binary_broadcast_kernel<op, uint32_t>
                                              : binary_broadcast_kernel<op, int64_t>;
    LAUNCH(kernel, blocks_for(total), kThreads, b, total, x, z, y);
  }
}

void binary_forward(BinaryOp op, const Broadcast& b, const float* x, const float* z, float* y) {
  switch (op) {
    case BinaryOp::add: return binary<BinaryOp::add>(b, x, z, y);
    case BinaryOp::sub: return binary<BinaryOp::sub>(b, x, z, y);
    case BinaryOp::mul: return binary<BinaryOp::mul>(b, x, z, y);
    case BinaryOp::div: return binary<BinaryOp::div>(b, x, z, y);
  }
}

__global__ void axpy_kernel(float* y, float alpha, const float* x, int64_t n) {
  GRID_STRIDE(i, n) y[i] += alpha * x[i];
}

void axpy(float* y, float alpha, const float* x, int64_t n) {
  if (n > 0) LAUNCH(axpy_kernel, blocks_for(n), kThreads, y, alpha, x, n);
}

__global__ void scale_kernel(float* x, float s, int64_t n) {
  GRID_STRIDE(i, n) x[i] *= s;
}

void scale(float* x, float s, int64_t n) {
  if (n > 0) LAUNCH(scale_kernel, blocks_for(n), kThreads, x, s, n);
}

// One thread per output element of y [planes, h + 2 pad_h, w + 2 pad_w].
__global__ void pad2d_forward_kernel(int64_t total, int64_t h, int64_t w, int pad_h, int pad_w, const float* x, float* y) {
  const int64_t ph = h + 2 * pad_h, pw = w + 2 * pad_w;
  GRID_STRIDE(k, total) {
    const int64_t j = k % pw, i = (k / pw) % ph, p = k / (pw * ph), si = i - pad_h, sj = j - pad_w;
    y[k] = (si >= 0 && si < h && sj >= 0 && sj < w) ? x[(p * h + si) * w + sj] : 0.f;
  }
}

void pad2d_forward(int64_t planes, int64_t h, int64_t w, int pad_h, int pad_w, const float* x, float* y) {
  const int64_t total = planes * (h + 2 * pad_h) * (w + 2 * pad_w);
  if (total > 0) LAUNCH(pad2d_forward_kernel, blocks_for(total), kThreads, total, h, w, pad_h, pad_w, x, y);
}

// One thread per element of gx [planes, h, w].
__global__ void pad2d_backward_kernel(int64_t total, int64_t h, int64_t w, int pad_h, int pad_w, const float* gy,
                                      float* gx) {
  const int64_t ph = h + 2 * pad_h, pw = w + 2 * pad_w;
  GRID_STRIDE(k, total) {
    const int64_t j = k % w, i = (k / w) % h, p = k / (w * h);
    gx[k] = gy[(p * ph + i + pad_h) * pw + j + pad_w];
  }
}

void pad2d_backward(int64_t planes, int64_t h, int64_t w, int pad_h, int pad_w, const float* gy, float* gx) {
  const int64_t total = planes * h * w;
  if (total > 0) LAUNCH(pad2d_backward_kernel, blocks_for(total), kThreads, total, h, w, pad_h, pad_w, gy, gx);
}

}  // namespace engine::cuda
