// Fully connected layer on CUDA through cuBLAS (the CPU one: engine/cpu/linear.cpp).
// x [N, I], w [O, I], b [O] -> y [N, O] = x wᵀ + b. cuBLAS is column-major: a row-major [R, C] matrix is
// the column-major [C, R] one, its transpose, so each row-major product is computed transposed:
// y = x wᵀ  <=>  yᵀ = w xᵀ, with yᵀ [O, N], w as wᵀ [I, O] column-major, xᵀ [I, N].
#include <climits>

#include "engine/cuda/common.cuh"

namespace engine::cuda {

static int to_int(int64_t v) {
  ENGINE_CHECK(v >= 0 && v <= INT_MAX, "linear size " + std::to_string(v) + " does not fit cuBLAS's int");
  return (int)v;
}

static const float kOne = 1.f, kZero = 0.f;

void linear_forward(const LinearShape& s, const float* x, const float* w, const float* b, float* y) {
  if (s.n * s.o == 0) return;
  const int n = to_int(s.n), i = to_int(s.i), o = to_int(s.o);
  if (i == 0) {
    fill(y, s.n * s.o, 0.f);
  } else {  // yᵀ [O, N] = (wᵀ)ᵀ [O, I] · xᵀ [I, N]
    CUBLAS_CHECK(cublasSgemm(cublas(), CUBLAS_OP_T, CUBLAS_OP_N, o, n, i, &kOne, w, i, x, i, &kZero, y, o));
  }
  if (s.bias) add_channel_bias(y, b, s.n, s.o, 1);
}

// gx [N, I] = gy w, gw [O, I] = gyᵀ x, gb [O] = Σ_n gy; overwritten, each skipped when null.
void linear_backward(const LinearShape& s, const float* x, const float* w, const float* gy, float* gx, float* gw,
                     float* gb) {
  const int n = to_int(s.n), i = to_int(s.i), o = to_int(s.o);
  if (gx && s.n * s.i > 0) {
    if (o == 0) {
      fill(gx, s.n * s.i, 0.f);
    } else {  // gxᵀ [I, N] = wᵀ [I, O] · gyᵀ [O, N]
      CUBLAS_CHECK(cublasSgemm(cublas(), CUBLAS_OP_N, CUBLAS_OP_N, i, n, o, &kOne, w, i, gy, o, &kZero, gx, i));
    }
  }
  if (gw && s.o * s.i > 0) {
    if (n == 0) {
      fill(gw, s.o * s.i, 0.f);
    } else {  // gwᵀ [I, O] = xᵀ [I, N] · gy [N, O]
      CUBLAS_CHECK(cublasSgemm(cublas(), CUBLAS_OP_N, CUBLAS_OP_T, i, o, n, &kOne, x, i, gy, o, &kZero, gw, i));
    }
  }
  if (gb) reduce_sum(Reduce3{1, s.n, s.o}, gy, gb);  // a fixed-order column sum
}

}  // namespace engine::cuda
