// Integer convolution on CUDA (the CPU one: engine/cpu/int8.cpp, oneDNN): im2col of the u8 codes, cuBLAS's
// int8 GEMM with s32 accumulation (cublasGemmEx, CUDA_R_8I inputs, CUBLAS_COMPUTE_32I), and an epilogue
// kernel with the bias, the requantization scale, the ReLU and the code range.
//
// cuBLAS multiplies signed int8 only, and the codes are u8. The im2col shifts them: v = q − 128 ∈ [−128, 127],
// and writes a padded tap as z − 128 (the code z, real 0). Then for every output
//     Σ_k (q_k − z) w_k = Σ_k v_k w_k + (128 − z) Σ_k w_k
// over all taps, padded ones included (they contribute (z − 128) w + (128 − z) w = 0): the correction is one
// constant per output channel, folded into the bias once per call. Exact, as the CPU's s32 accumulator.
//
// x u8 NHWC [N, H, W, C], w s8 [O, C/g, kh, kw], b s32 [O], y NHWC [N, OH, OW, O].
// Per group g: col_g [P, Kp] (P = N OH OW rows, K = C/g kh kw taps padded to Kp, a multiple of 4, with 0)
// and w_g [O/g, Kp]; acc [P, Op] (Op = O rounded up to 4) row-major is column-major [Op, P], computed as
// accᵀ_g = w_g · col_gᵀ: cublasGemmEx(T, N, O/g, P, Kp, w_g, ld Kp, col_g, ld Kp, acc + g O/g, ld Op).
#include <climits>

#include "engine/cuda/common.cuh"

namespace engine::cuda {

namespace {

int to_int(int64_t v) {
  ENGINE_CHECK(v >= 0 && v <= INT_MAX, "int8 conv size " + std::to_string(v) + " does not fit cuBLAS's int");
  return (int)v;
}

// col [G, P, Kp] from x; tap k = (c, ki, kj) as in the weight's [C/g, kh, kw].
__global__ void im2col_s8_kernel(ConvShape s, int64_t kp, int z, const uint8_t* x, int8_t* col) {
  const int64_t cg = s.c / s.groups, k_taps = cg * s.kh * s.kw, p_rows = s.n * s.oh * s.ow;
  GRID_STRIDE(i, s.groups * p_rows * kp) {
    const int64_t k = i % kp, p = i / kp % p_rows, g = i / (kp * p_rows);
    int v = 0;
    if (k < k_taps) {
      const int64_t c = k / (s.kh * s.kw), ki = k / s.kw % s.kh, kj = k % s.kw;
      const int64_t ow = p % s.ow, oh = p / s.ow % s.oh, n = p / (s.ow * s.oh);
      const int64_t hi = oh * s.stride + ki - s.ph, wj = ow * s.stride + kj - s.pw;
      const bool inside = hi >= 0 && hi < s.h && wj >= 0 && wj < s.w;
      v = (inside ? (int)x[((n * s.h + hi) * s.w + wj) * s.c + g * cg + c] : z) - 128;
    }
    col[i] = (int8_t)v;
  }
}

// w_pad [O, Kp] (taps past K are 0) and bias'[o] = b[o] + (128 − z) Σ_k w[o, k].
__global__ void prepare_weights_kernel(int64_t o_count, int64_t k_taps, int64_t kp, int z, const int8_t* w,
                                       const int32_t* b, int8_t* w_pad, int32_t* bias) {
  GRID_STRIDE(o, o_count) {
    int32_t sum = 0;
    for (int64_t k = 0; k < kp; k++) {
      const int8_t v = k < k_taps ? w[o * k_taps + k] : (int8_t)0;
      w_pad[o * kp + k] = v;
      sum += v;
    }
    bias[o] = b[o] + (128 - z) * sum;
  }
}

// y[p, o] from acc[p, o] (row stride op): i32 acc + b; f32 scale (acc + b), ReLU; u8 the clipped code.
__global__ void epilogue_kernel(int64_t p_rows, int64_t o_count, int64_t op, const int32_t* acc, const int32_t* bias,
                                const float* scales, int64_t n_scales, DType dst, bool relu, int dst_max, void* y) {
  GRID_STRIDE(i, p_rows * o_count) {
    const int64_t o = i % o_count, p = i / o_count;
    const int32_t a = acc[p * op + o] + bias[o];
    if (dst == DType::i32) {
      ((int32_t*)y)[i] = a;
      continue;
    }
    const float v = scales[n_scales == 1 ? 0 : o] * (float)a;
    if (dst == DType::f32) ((float*)y)[i] = relu ? fmaxf(v, 0.f) : v;
    else ((uint8_t*)y)[i] = (uint8_t)fminf(fmaxf(rintf(v), 0.f), (float)dst_max);
  }
}

}  // namespace

void qconv_forward(const QConvSpec& q, const uint8_t* x, const int8_t* w, const int32_t* b, void* y) {
  const ConvShape& s = q.s;
  ENGINE_CHECK(q.src == DType::u8 && !q.src_nchw, "the CUDA int8 convolution takes u8 codes in NHWC");
  ENGINE_CHECK(q.dst == DType::i32 || q.scales.size() == 1 || (int64_t)q.scales.size() == s.o,
               std::to_string(q.scales.size()) + " scales for " + std::to_string(s.o) + " channels");
  const int64_t cg = s.c / s.groups, og = s.o / s.groups, k_taps = cg * s.kh * s.kw, kp = (k_taps + 3) / 4 * 4;
  const int64_t p_rows = s.n * s.oh * s.ow, op = (s.o + 3) / 4 * 4;
  if (p_rows == 0 || s.o == 0) return;
  DeviceBuffer col(s.groups * p_rows * kp), w_pad(s.o * kp), bias(s.o * sizeof(int32_t)),
      acc(p_rows * op * sizeof(int32_t)), scales(std::max<size_t>(q.scales.size(), 1) * sizeof(float));
  if (!q.scales.empty()) copy_to_device(scales.ptr, q.scales.data(), q.scales.size() * sizeof(float));
  LAUNCH(prepare_weights_kernel, blocks_for(s.o), kThreads, s.o, k_taps, kp, q.src_zero_point, w, b,
         w_pad.as<int8_t>(), bias.as<int32_t>());
  LAUNCH(im2col_s8_kernel, blocks_for(s.groups * p_rows * kp), kThreads, s, kp, q.src_zero_point, x, col.as<int8_t>());
  const int32_t one = 1, zero = 0;
  for (int64_t g = 0; g < s.groups; g++)
    CUBLAS_CHECK(cublasGemmEx(cublas(), CUBLAS_OP_T, CUBLAS_OP_N, to_int(og), to_int(p_rows), to_int(kp), &one,
                              w_pad.as<int8_t>() + g * og * kp, CUDA_R_8I, to_int(kp),
                              col.as<int8_t>() + g * p_rows * kp, CUDA_R_8I, to_int(kp), &zero,
                              acc.as<int32_t>() + g * og, CUDA_R_32I, to_int(op), CUBLAS_COMPUTE_32I,
                              CUBLAS_GEMM_DEFAULT));
  LAUNCH(epilogue_kernel, blocks_for(p_rows * s.o), kThreads, p_rows, s.o, op, acc.as<int32_t>(), bias.as<int32_t>(),
         scales.as<float>(), (int64_t)std::max<size_t>(q.scales.size(), 1), q.dst, q.relu, q.dst_max, y);
}

}  // namespace engine::cuda
