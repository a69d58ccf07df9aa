// 2-d convolution on CUDA through cuDNN (the CPU one: engine/cpu/conv.cpp, oneDNN). A plan per shape
// holds the descriptors and, chosen on first use with cuDNN's heuristics (the _v7 queries) under a
// workspace limit, the algorithm of each direction; one workspace buffer is shared by all plans.
// x [N, C, H, W], w [O, C/groups, kh, kw], b [O], y [N, O, OH, OW], all NCHW fp32.
#include <array>
#include <climits>
#include <map>

#include "engine/cuda/common.cuh"

namespace engine::cuda {

namespace {

constexpr size_t kWorkspaceLimit = size_t(512) << 20;

struct ConvPlan {
  cudnnTensorDescriptor_t x, y;
  cudnnFilterDescriptor_t w;
  cudnnConvolutionDescriptor_t conv;
  // Chosen on first use of each direction (an eval forward never pays for the backward queries).
  bool has_fwd = false, has_bwd_data = false, has_bwd_filter = false;
  cudnnConvolutionFwdAlgoPerf_t fwd;
  cudnnConvolutionBwdDataAlgoPerf_t bwd_data;
  cudnnConvolutionBwdFilterAlgoPerf_t bwd_filter;
};

int to_int(int64_t v) {
  ENGINE_CHECK(v >= 0 && v <= INT_MAX, "conv2d size " + std::to_string(v) + " does not fit cuDNN's int");
  return (int)v;
}

std::string shape_str(const ConvShape& s) {
  return "x [" + std::to_string(s.n) + ", " + std::to_string(s.c) + ", " + std::to_string(s.h) + ", " +
         std::to_string(s.w) + "], w [" + std::to_string(s.o) + ", " + std::to_string(s.c / s.groups) + ", " +
         std::to_string(s.kh) + ", " + std::to_string(s.kw) + "], stride " + std::to_string(s.stride) +
         ", padding " + std::to_string(s.ph) + "x" + std::to_string(s.pw) + ", groups " + std::to_string(s.groups);
}

ConvPlan& plan_for(const ConvShape& s) {
  ENGINE_CHECK(!s.x_block && !s.y_block, "the blocked layout is the CPU's; CUDA convolutions take NCHW");
  using Key = std::array<int64_t, 13>;
  static auto* plans = new std::map<Key, ConvPlan>;  // never destroyed, as the handles they use
  const Key key{s.n, s.c, s.h, s.w, s.o, s.kh, s.kw, s.oh, s.ow, s.stride, s.ph, s.pw, s.groups};
  auto it = plans->find(key);
  if (it != plans->end()) return it->second;
  ConvPlan p;
  CUDNN_CHECK(cudnnCreateTensorDescriptor(&p.x));
  CUDNN_CHECK(cudnnCreateTensorDescriptor(&p.y));
  CUDNN_CHECK(cudnnCreateFilterDescriptor(&p.w));
  CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&p.conv));
  CUDNN_CHECK(cudnnSetTensor4dDescriptor(p.x, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, to_int(s.n), to_int(s.c),
                                         to_int(s.h), to_int(s.w)));
  CUDNN_CHECK(cudnnSetFilter4dDescriptor(p.w, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NCHW, to_int(s.o),
                                         to_int(s.c / s.groups), to_int(s.kh), to_int(s.kw)));
  CUDNN_CHECK(cudnnSetConvolution2dDescriptor(p.conv, s.ph, s.pw, s.stride, s.stride, 1, 1,
                                              CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
  CUDNN_CHECK(cudnnSetConvolutionGroupCount(p.conv, s.groups));
  // Plain fp32 FMA kernels: no TF32 tensor cores, so results match the CPU's to fp32 rounding.
  CUDNN_CHECK(cudnnSetConvolutionMathType(p.conv, CUDNN_FMA_MATH));
  int n, c, h, w;
  CUDNN_CHECK(cudnnGetConvolution2dForwardOutputDim(p.conv, p.x, p.w, &n, &c, &h, &w));
  ENGINE_CHECK(n == s.n && c == s.o && h == s.oh && w == s.ow,
               "cuDNN's output [" + std::to_string(n) + ", " + std::to_string(c) + ", " + std::to_string(h) + ", " +
                   std::to_string(w) + "] differs from the op's for " + shape_str(s));
  CUDNN_CHECK(cudnnSetTensor4dDescriptor(p.y, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, n, c, h, w));
  return plans->emplace(key, p).first->second;
}

// The first of cuDNN's ranked candidates that ran its query successfully and fits the workspace limit,
// preferring fp32 FMA math and then deterministic algorithms (no atomics in the backward passes).
template <class Perf>
Perf pick(const Perf* perfs, int count, const char* direction, const ConvShape& s) {
  for (int pass = 0; pass < 4; pass++) {
    const bool need_fma = pass < 2, need_deterministic = pass % 2 == 0;
    for (int i = 0; i < count; i++) {
      const Perf& p = perfs[i];
      if (p.status != CUDNN_STATUS_SUCCESS || p.memory > kWorkspaceLimit) continue;
      if (need_fma && p.mathType != CUDNN_FMA_MATH) continue;
      if (need_deterministic && p.determinism != CUDNN_DETERMINISTIC) continue;
      return p;
    }
  }
  fail(std::string("cuDNN has no ") + direction + " convolution algorithm within " +
       std::to_string(kWorkspaceLimit >> 20) + " MiB of workspace for " + shape_str(s));
}

// One device buffer for every plan's workspace, grown when a plan needs more. Growing frees the old one
// to the caching allocator: safe, as the work that used it runs before any later user on the one stream.
void* workspace(size_t bytes) {
  static void* ptr = nullptr;
  static size_t size = 0;
  if (bytes > size) {
    if (ptr) free(ptr, size);
    ptr = nullptr;
    size = 0;
    ptr = alloc(bytes);
    size = bytes;
  }
  return ptr;
}

const float kOne = 1.f, kZero = 0.f;

__global__ void add_channel_bias_kernel(float* y, const float* b, int64_t total, int64_t c, int64_t hw) {
  GRID_STRIDE(i, total) y[i] += b[i / hw % c];
}

}  // namespace

void add_channel_bias(float* y, const float* b, int64_t n, int64_t c, int64_t hw) {
  const int64_t total = n * c * hw;
  if (total > 0) LAUNCH(add_channel_bias_kernel, blocks_for(total), kThreads, y, b, total, c, hw);
}

// y = conv(x, w) (+ b)
void conv2d_forward(const ConvShape& s, const float* x, const float* w, const float* b, float* y, Storage*) {
  if (s.n * s.o * s.oh * s.ow == 0) return;
  ConvPlan& p = plan_for(s);
  if (!p.has_fwd) {
    cudnnConvolutionFwdAlgoPerf_t perfs[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
    int count = 0;
    CUDNN_CHECK(cudnnGetConvolutionForwardAlgorithm_v7(cudnn(), p.x, p.w, p.conv, p.y,
                                                       CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &count, perfs));
    p.fwd = pick(perfs, count, "forward", s);
    p.has_fwd = true;
  }
  CUDNN_CHECK(cudnnSetConvolutionMathType(p.conv, p.fwd.mathType));
  CUDNN_CHECK(cudnnConvolutionForward(cudnn(), &kOne, p.x, x, p.w, w, p.conv, p.fwd.algo,
                                      workspace(p.fwd.memory), p.fwd.memory, &kZero, p.y, y));
  if (s.bias) add_channel_bias(y, b, s.n, s.o, s.oh * s.ow);
}

// y = relu(conv(x, w) + b), for inference
void conv2d_relu_forward(const ConvShape& s, const float* x, const float* w, const float* b, float* y, Storage*) {
  conv2d_forward(s, x, w, b, y, nullptr);
  unary_forward(UnaryOp::relu, y, y, s.n * s.o * s.oh * s.ow, 0.f, 0.f);
}

// gx = conv_transpose(gy, w), overwritten
void conv2d_backward_data(const ConvShape& s, const float* gy, const float* w, float* gx) {
  if (s.n * s.c * s.h * s.w == 0) return;
  if (s.o * s.oh * s.ow == 0) return fill(gx, s.n * s.c * s.h * s.w, 0.f);
  ConvPlan& p = plan_for(s);
  if (!p.has_bwd_data) {
    cudnnConvolutionBwdDataAlgoPerf_t perfs[CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT];
    int count = 0;
    CUDNN_CHECK(cudnnGetConvolutionBackwardDataAlgorithm_v7(cudnn(), p.w, p.y, p.conv, p.x,
                                                            CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT, &count, perfs));
    p.bwd_data = pick(perfs, count, "backward-data", s);
    p.has_bwd_data = true;
  }
  CUDNN_CHECK(cudnnSetConvolutionMathType(p.conv, p.bwd_data.mathType));
  CUDNN_CHECK(cudnnConvolutionBackwardData(cudnn(), &kOne, p.w, w, p.y, gy, p.conv, p.bwd_data.algo,
                                           workspace(p.bwd_data.memory), p.bwd_data.memory, &kZero, p.x, gx));
}

// gw = Σ_n x ⋆ gy and gb[o] = Σ gy[:, o], overwritten (either may be null when not needed)
void conv2d_backward_weight(const ConvShape& s, const float* x, const float* gy, float* gw, float* gb) {
  if (s.bias && gb) {
    // Σ over N and OH*OW as two fixed-order reductions: [N*O, OH*OW] -> [N, O] -> [O]
    DeviceBuffer rows(s.n * s.o * sizeof(float));
    reduce_sum(Reduce3{s.n * s.o, s.oh * s.ow, 1}, gy, rows.as<float>());
    reduce_sum(Reduce3{1, s.n, s.o}, rows.as<float>(), gb);
  }
  if (!gw) return;
  const int64_t wn = s.o * (s.c / s.groups) * s.kh * s.kw;
  if (wn == 0) return;
  if (s.n * s.oh * s.ow == 0) return fill(gw, wn, 0.f);
  ConvPlan& p = plan_for(s);
  if (!p.has_bwd_filter) {
    cudnnConvolutionBwdFilterAlgoPerf_t perfs[CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT];
    int count = 0;
    CUDNN_CHECK(cudnnGetConvolutionBackwardFilterAlgorithm_v7(
        cudnn(), p.x, p.y, p.conv, p.w, CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT, &count, perfs));
    p.bwd_filter = pick(perfs, count, "backward-filter", s);
    p.has_bwd_filter = true;
  }
  CUDNN_CHECK(cudnnSetConvolutionMathType(p.conv, p.bwd_filter.mathType));
  CUDNN_CHECK(cudnnConvolutionBackwardFilter(cudnn(), &kOne, p.x, x, p.y, gy, p.conv, p.bwd_filter.algo,
                                             workspace(p.bwd_filter.memory), p.bwd_filter.memory, &kZero, p.w,
                                             gw));
}

}  // namespace engine::cuda
