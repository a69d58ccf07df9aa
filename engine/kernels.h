// Device kernels: the same declarations in engine::cpu (engine/cpu/*.cpp) and engine::cuda
// (engine/cuda/*.cu). They take raw pointers of their device and plain shape structs; the ops in
// engine/*.cpp check shapes, allocate outputs, record autograd nodes and call them through DISPATCH.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "engine/cuda/cuda_backend.h"
#include "engine/tensor.h"

namespace engine {

enum class UnaryOp : uint8_t { relu, square, sqrt, rsqrt, clamp, round, add_scalar, mul_scalar, sigmoid, abs, pow };
enum class BinaryOp : uint8_t { add, sub, mul, div };

// Output dims and the inputs' element strides for it (0 along a broadcast dim).
struct Broadcast {
  int n = 0;
  int64_t out[Shape::max_dims] = {};
  int64_t sa[Shape::max_dims] = {};
  int64_t sb[Shape::max_dims] = {};
};

// Reduction of x viewed as [outer, mid, inner] over mid (a run of contiguous dims of the tensor).
struct Reduce3 {
  int64_t outer = 1, mid = 1, inner = 1;
};

struct ConvShape {
  int64_t n, c, h, w;   // input
  int64_t o, kh, kw;    // weight [o, c / groups, kh, kw]
  int64_t oh, ow;       // output
  int stride;
  int ph, pw;           // zero padding: ph rows above and below, pw columns left and right
  int groups;
  bool bias;
  int64_t x_block = 0;      // x (and gx) in the blocked layout [N, C/B, H, W, B], B = x_block (CPU only;
  int64_t y_block = 0;      //   ops.h, the activation layout); y (and gy) likewise; 0: NCHW
};

// An inference convolution of integer inference (engine/cpu/int8.h QConv, which says what it computes;
// engine::cuda::qconv_forward below).
struct QConvSpec {
  ConvShape s;                 // padding (kh - 1) / 2 each way; s.bias and the blocks are ignored (always a bias, plain)
  DType src = DType::u8;       // u8 codes, or f32 (an FP32 layer; CPU only)
  DType dst = DType::u8;       // u8 codes, f32, or i32 (u8 src only)
  bool src_nchw = false;       // the src layout NCHW (the image), else NHWC; the dst is NHWC
  int src_zero_point = 0;      // z of the u8 src
  int src_max = 255;           // u8 src: its largest code (2^A − 1 of its A bits; the exact path's test)
  bool force_split = false;    // u8 src: the exact split even where one convolution is exact (tests)
  std::vector<float> scales;   // u8 src, dst u8 or f32: [1] or [O]
  bool relu = true;
  int dst_max = 255;           // dst u8: the largest code (2^A - 1 of the next layer's A bits)
};

struct LinearShape {
  int64_t n, i, o;
  bool bias;
};

// Max pooling (ops.h max_pool2d): x [N, C, H, W] -> y [N, C, OH, OW], kernel x kernel windows.
struct PoolShape {
  int64_t n, c, h, w;  // x
  int64_t oh, ow;      // y
  int kernel, stride, padding;
  int64_t block = 0;   // x, y, their gradients and the indices as [N, C/B, ., ., B], B = block (CPU only); 0: NCHW
};

// A fake quantizer (ops.h fake_quantize): x viewed as [rows, per_row], one step per row (rows 1: one step).
struct FakeQuant {
  int64_t rows = 1, per_row = 0;
  int zero_point = 0, q_min = 0, q_max = 0;
};

// Sync-BN's all-reduce of a training-mode BN's sums (ops.h set_batch_norm_sync), or nullptr when off.
using BatchSumFn = void (*)(double* values, size_t n);
BatchSumFn batch_norm_sync();

struct BnShape {
  int64_t n, c, hw;
  int64_t block = 0;  // x [N, C/B, HW, B], B = block (ops.h, the activation layout; CPU, channel_mean_var only); 0: [N, C, HW]
};

// One batch norm of a fused sum (bn_add_relu in ops.h): x [N, C, HW] (or blocked), the rest [C].
struct BnBranch {
  const float* x = nullptr;
  const float* gamma = nullptr;
  const float* beta = nullptr;
  float* running_mean = nullptr;  // training: updated in place by the forward
  float* running_var = nullptr;
  float* mean = nullptr;          // the statistics that normalize: training, the batch mean and biased
  float* var = nullptr;           //   variance (written by the forward); eval, the running ones
  float* gx = nullptr;            // backward outputs, each null when not needed
  float* ggamma = nullptr;
  float* gbeta = nullptr;
};

// y = relu(Σ_b BN_b(x_b)) over `count` branches (without the relu when relu is false), all x_b and y
// [N, C, HW], or [N, C/B, HW, B] when blocked by B = block (channel c at [., c / B, ., c % B]).
struct BnSum {
  int64_t n = 0, c = 0, hw = 0;
  int64_t block = 0;
  int count = 0;  // 1 to 3
  bool relu = true;
  BnBranch b[3];
};

}  // namespace engine

#define ENGINE_KERNEL_DECLS                                                                          \
  void fill(float* y, int64_t n, float value);                                                      \
  void unary_forward(UnaryOp op, const float* x, float* y, int64_t n, float p0, float p1);           \
  /* gx = d op(x) / dx * gy  (y = op(x) is given for ops whose derivative is cheaper from it) */    \
  void unary_backward(UnaryOp op, const float* x, const float* y, const float* gy, float* gx,        \
                      int64_t n, float p0, float p1);                                               \
  void binary_forward(BinaryOp op, const Broadcast& b, const float* x, const float* z, float* y);    \
  void axpy(float* y, float alpha, const float* x, int64_t n); /* y += alpha x */                   \
  void scale(float* x, float s, int64_t n);                                                         \
  /* x [planes, h, w] -> y [planes, h + 2 pad_h, w + 2 pad_w], zeros around; the backward crops gy */ \
  void pad2d_forward(int64_t planes, int64_t h, int64_t w, int pad_h, int pad_w, const float* x, float* y); \
  void pad2d_backward(int64_t planes, int64_t h, int64_t w, int pad_h, int pad_w, const float* gy, float* gx); \
  void reduce_sum(const Reduce3& r, const float* x, float* y); /* y[outer, inner] */                \
  /* gx[outer, mid, inner] = gy[outer, inner] * s, the gradient of a sum (s = 1) or mean */          \
  void reduce_sum_backward(const Reduce3& r, const float* gy, float* gx, float s);                  \
  /* frozen_w: w's storage where it is frozen (Tensor::freeze_), else null: the CPU keeps w's forms  \
     in its kernels' layouts there (engine/cpu/frozen.h); CUDA's cuDNN takes w as it is */          \
  void conv2d_forward(const ConvShape& s, const float* x, const float* w, const float* b, float* y,   \
                      Storage* frozen_w);                                                           \
  /* y = relu(conv2d(x, w) + b), for inference (b may be null) */                                   \
  void conv2d_relu_forward(const ConvShape& s, const float* x, const float* w, const float* b, float* y, \
                           Storage* frozen_w);                                                      \
  void conv2d_backward_data(const ConvShape& s, const float* gy, const float* w, float* gx);        \
  /* gw (and gb when s.bias) are overwritten, not accumulated */                                    \
  void conv2d_backward_weight(const ConvShape& s, const float* x, const float* gy, float* gw,       \
                              float* gb);                                                           \
  void linear_forward(const LinearShape& s, const float* x, const float* w, const float* b, float* y); \
  void linear_backward(const LinearShape& s, const float* x, const float* w, const float* gy,        \
                       float* gx, float* gw, float* gb); /* null pointers for unneeded grads */     \
  /* training: batch mean and biased var into mean/var, running stats updated in place */           \
  void bn_train_forward(const BnShape& s, const float* x, const float* gamma, const float* beta,     \
                        float* running_mean, float* running_var, float momentum, float eps,          \
                        float* mean, float* var, float* y);                                         \
  void bn_eval_forward(const BnShape& s, const float* x, const float* gamma, const float* beta,      \
                       const float* running_mean, const float* running_var, float eps, float* y);    \
  /* gradients of the training-mode forward; gx, ggamma, gbeta may be null */                       \
  void bn_train_backward(const BnShape& s, const float* x, const float* gamma, const float* mean,    \
                         const float* var, float eps, const float* gy, float* gx, float* ggamma,     \
                         float* gbeta);                                                             \
  void bn_eval_backward(const BnShape& s, const float* x, const float* gamma,                        \
                        const float* running_mean, const float* running_var, float eps,              \
                        const float* gy, float* gx, float* ggamma, float* gbeta);                    \
  /* mean[c] = (1/M) sum over n, hw of x; var[c] = (1/M) sum of (x - mean[c])^2 (M = N HW), in double */ \
  void channel_mean_var_forward(const BnShape& s, const float* x, float* mean, float* var);           \
  /* gx = gmean[c] / M + 2 gvar[c] (x - mean[c]) / M (gmean, gvar null: zeros) */                   \
  void channel_mean_var_backward(const BnShape& s, const float* x, const float* mean, const float* gmean, \
                                const float* gvar, float* gx);                                      \
  /* training: the batch statistics into each branch's mean, var and its running ones updated in place; \
     eval: normalizes with each branch's mean, var as given */                                     \
  void bn_sum_relu_forward(const BnSum& s, bool training, float momentum, float eps, float* y);       \
  /* the gradients of bn_sum_relu_forward (from its y, for the ReLU, and gy) into each branch's gx,   \
     ggamma, gbeta */                                                                               \
  void bn_sum_relu_backward(const BnSum& s, bool training, float eps, const float* y, const float* gy); \
  /* y = the max of each window (scalar_math.h pool_takes); indices (i32, y's layout; null: not kept)  \
     its argmax i * W + j within x's plane */                                                       \
  void max_pool_forward(const PoolShape& s, const float* x, float* y, int32_t* indices);             \
  /* gx (overwritten) = Σ gy of the outputs whose argmax it is, added in the outputs' row-major order */ \
  void max_pool_backward(const PoolShape& s, const int32_t* indices, const float* gy, float* gx);    \
  /* y = (clamp(round(x / s) + z, q_min, q_max) - z) s, s = step[row]; round half to even */          \
  void fake_quant_forward(const FakeQuant& q, const float* x, const float* step, float* y);          \
  /* gx = gy inside the code range, else 0; terms = gy d y / d s per element (summed per row by the op) */ \
  void fake_quant_backward(const FakeQuant& q, const float* x, const float* step, const float* gy, float* gx, \
                           float* terms);                                                           \
  /* loss[n] per row, and probs (softmax) for the backward; labels i32 */                          \
  void cross_entropy_forward(int64_t n, int64_t k, const float* logits, const int32_t* labels,       \
                             float smoothing, float* loss_rows, float* probs);                      \
  void cross_entropy_backward(int64_t n, int64_t k, const float* probs, const int32_t* labels,       \
                              float smoothing, float gscale, float* glogits);                       \
  /* distillation: kl[n] per row T² KL(softmax(teacher/T) || softmax(student/T)), both softmaxes kept   \
     for the backward; gstudent = gscale (p_student - p_teacher) */                                  \
  void distill_kl_forward(int64_t n, int64_t k, const float* student, const float* teacher, float temperature, \
                          float* kl_rows, float* p_student, float* p_teacher);                     \
  void distill_kl_backward(int64_t total, const float* p_student, const float* p_teacher, float gscale, \
                           float* gstudent);                                                        \
  /* one SGD step of n parameters (optim.h): d = g + wd p; with momentum (buf not null)              \
     buf = first ? d : momentum buf + d, d = nesterov ? d + momentum buf : buf; then p -= lr d,      \
     p = max(|p|, FLT_EPSILON) where positive */                                                                    \
  void sgd_update(float* p, const float* g, float* buf, int64_t n, float lr, float momentum, float wd,  \
                  bool nesterov, bool first, bool positive);

namespace engine::cpu {
ENGINE_KERNEL_DECLS
// The activation layout (ops.h, CPU only): x [N, C, HW] -> y [N, C/B, HW, B] (C % B == 0), and back.
void channels_to_blocked(int64_t n, int64_t c, int64_t hw, int64_t block, const float* x, float* y);
void channels_from_blocked(int64_t n, int64_t c, int64_t hw, int64_t block, const float* x, float* y);
// The channel block oneDNN's convolutions want on this CPU: 16 (AVX-512), 8 (AVX2), 0 (plain; asked once,
// engine/cpu/conv.cpp).
int64_t conv_channel_block();
// Whether 3x3 stride-1 convolutions in nChw8c run our Winograd here (engine/cpu/winograd.h: where oneDNN has
// none of its own, unless REPQ_WINOGRAD=0): then a network's blocked and NCHW runs differ by float rounding.
bool conv_own_winograd();
// engine/cpu/dnnl.h's, for the engine's ops.
std::string dnnl_isa();
bool dnnl_has_vnni();
}
namespace engine::cuda {
ENGINE_KERNEL_DECLS
// engine/cuda/int8.cu: a u8-src QConvSpec (NHWC src) through im2col and cuBLAS's int8 GEMM. x u8, w s8
// [O, C/groups, kh, kw], b s32 [O], y of q.dst; device pointers.
void qconv_forward(const QConvSpec& q, const uint8_t* x, const int8_t* w, const int32_t* b, void* y);
}

// Calls cpu::fn or cuda::fn by device. Without the CUDA backend a cuda tensor fails with a clear message.
#ifdef ENGINE_CUDA
#define DISPATCH(device, fn, ...) \
  ((device) == ::engine::Device::cpu ? ::engine::cpu::fn(__VA_ARGS__) : ::engine::cuda::fn(__VA_ARGS__))
#else
#define DISPATCH(device, fn, ...) \
  ((device) == ::engine::Device::cpu ? ::engine::cpu::fn(__VA_ARGS__) : ::engine::cuda::require())
#endif
