// The engine's ops. Each is differentiable unless said otherwise: it records a node when an input
// requires grad (see autograd.h). Forward and backward of a family live side by side in
// engine/<family>.cpp; the device kernels they call are in engine/cpu/ and engine/cuda/ (kernels.h).
// Shapes: N batch, C channels, H, W spatial, O output channels, I input features, K classes.
#pragma once
#include <string>
#include <vector>

#include "engine/tensor.h"

namespace engine {

// --- elementwise.cpp: element-wise and broadcast ops -------------------------------------------------
// Binary ops broadcast as NumPy does (dims aligned from the right; size-1 dims stretch), e.g.
// w [O, I, 3, 3] * s [O, 1, 1, 1] (a per-output-channel scale) or x [N, C, H, W] + b [1, C, 1, 1].
Tensor add(const Tensor& a, const Tensor& b);
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor div(const Tensor& a, const Tensor& b);
Tensor add_scalar(const Tensor& x, float s);       // x + s
Tensor mul_scalar(const Tensor& x, float s);       // x * s
Tensor relu(const Tensor& x);
Tensor square(const Tensor& x);                    // x * x
Tensor sqrt(const Tensor& x);
Tensor rsqrt(const Tensor& x);                     // 1 / sqrt(x)
Tensor clamp(const Tensor& x, float lo, float hi); // gradient 1 inside [lo, hi], 0 outside
Tensor round_ste(const Tensor& x);                 // round half to even; backward passes the gradient (STE)
Tensor sigmoid(const Tensor& x);                   // 1 / (1 + exp(-x))
Tensor abs(const Tensor& x);                       // |x|; gradient sign(x), 0 at 0 (as torch)
Tensor pow(const Tensor& x, float p);              // x^p, as torch.pow (NaN for x < 0 and a fractional p)
inline Tensor operator+(const Tensor& a, const Tensor& b) { return add(a, b); }
inline Tensor operator-(const Tensor& a, const Tensor& b) { return sub(a, b); }
inline Tensor operator*(const Tensor& a, const Tensor& b) { return mul(a, b); }
inline Tensor operator/(const Tensor& a, const Tensor& b) { return div(a, b); }

// In place, never recorded (optimizers, running statistics, gradient accumulation).
void add_(const Tensor& a, const Tensor& b);             // a += b, same shape
void axpy_(const Tensor& y, float alpha, const Tensor& x);  // y += alpha * x, same shape
void scale_(const Tensor& x, float s);                   // x *= s

// --- shape.cpp ---------------------------------------------------------------------------------------
Tensor reshape(const Tensor& x, const Shape& shape);     // same storage; -1 is not supported
Tensor flatten(const Tensor& x);                         // [N, ...] -> [N, rest]
// Zero padding of the last two dims: pad_h rows above and below, pad_w columns left and right
// ([..., H, W] -> [..., H + 2 pad_h, W + 2 pad_w]); pad2d(x, p) pads both by p. ACNet's 1x3 kernel into a
// 3x3 one's middle row is pad2d(k, 1, 0), its 3x1 into the middle column pad2d(k, 0, 1).
Tensor pad2d(const Tensor& x, int pad_h, int pad_w);
inline Tensor pad2d(const Tensor& x, int pad) { return pad2d(x, pad, pad); }
Tensor detach(const Tensor& x);                          // x.detach()
Tensor select(const Tensor& x, int64_t i);               // x [R, ...] -> x[i] [...], a copy

// --- reduce.cpp --------------------------------------------------------------------------------------
Tensor sum(const Tensor& x, const std::vector<int>& dims, bool keepdim = false);
Tensor mean(const Tensor& x, const std::vector<int>& dims, bool keepdim = false);
Tensor sum_all(const Tensor& x);                         // -> []
Tensor mean_all(const Tensor& x);                        // -> []
Tensor global_avg_pool(const Tensor& x);                 // [N, C, H, W] -> [N, C]
Tensor sum_to(const Tensor& x, const Shape& shape);      // sums a broadcast result back to `shape`

// --- conv.cpp (oneDNN on the CPU, cuDNN on CUDA) ------------------------------------------------------
// Zero padding of a convolution: h rows above and below, w columns left and right. An int pads both
// alike; {0, 1} centres a 1x3 kernel where a 3x3 with padding 1 would sit (ACNet's thin branches).
struct Padding {
  int h, w;
  Padding(int both) : h(both), w(both) {}
  Padding(int h, int w) : h(h), w(w) {}
  // (kh/2, kw/2) of a kernel [O, I/g, kh, kw]: odd kernels centred on the output pixel
  static Padding centred(const Tensor& kernel) { return {(int)kernel.size(2) / 2, (int)kernel.size(3) / 2}; }
};
// x [N, C, H, W], w [O, C/groups, kh, kw], bias [O] or undefined -> [N, O, H', W'],
// H' = (H + 2 padding.h - kh) / stride + 1 (rounded down), W' likewise.
// On the CPU, y is in the blocked layout where its channels allow (see "the activation layout" below).
Tensor conv2d(const Tensor& x, const Tensor& w, const Tensor& bias, int stride = 1, Padding padding = 0,
              int groups = 1);
// relu(conv2d(x, w, bias, ...)) without recording a gradient: the deployed RepVGG block. Layouts as
// conv2d. NaN stays NaN, as in PyTorch.
Tensor conv2d_relu(const Tensor& x, const Tensor& w, const Tensor& bias, int stride = 1, Padding padding = 0,
                   int groups = 1);

// --- layout.cpp: the activation layout -------------------------------------------------------------
// On the CPU an activation x [N, C, H, W] may be stored channel-blocked, as oneDNN's nChw{B}c: channel c
// of pixel (n, h, w) at [n][c / B][h][w][c % B] (x.channel_block() == B). Its shape, its values and what
// every op computes on it are those of the NCHW tensor; only the storage differs (torch's memory_format).
// Convolutions write it where the channels allow, with the block oneDNN's kernels want on this CPU, and
// take it without reordering; the ops a RepVGG block runs between its convolutions keep it (element-wise
// ops of operands of one shape, bn_add_relu, channel_mean_var, fake_quantize, straight_through; sum and mean
// over H and W, and N, such as global_avg_pool, read it and return NCHW), so that a network runs blocked
// from its first convolution to its pooling; max_pool2d keeps it too (ResNet's stem pools between its first
// convolution and the next). Any other op takes either layout and computes on NCHW (a
// recorded to_plain first): batch_norm2d (QARepVGG's BN of the branch sum), reshape, pad2d, a broadcast.
// The block: 16 on AVX-512, 8 on AVX2 (asked of oneDNN once), 0 (NCHW everywhere) where it wants neither.
int64_t activation_block();
// Overrides activation_block() on this process (tests: the same model in NCHW, block 8 and block 16).
void set_activation_block(int64_t block);
// The CPU as oneDNN sees it, for the programs' first line: "oneDNN ISA avx2 (no VNNI), activations nChw8c".
std::string cpu_summary();
// x [N, C, H, W] (C % block == 0) in the layout of `block` (0: NCHW), recorded; x itself if already there.
Tensor to_layout(const Tensor& x, int64_t block);
inline Tensor to_plain(const Tensor& x) { return to_layout(x, 0); }

// --- fused.cpp: fused ops of the RepVGG block -------------------------------------------------------
// One BN's tensors, [C] each, for bn_add_relu.
struct BnParams {
  Tensor gamma, beta, running_mean, running_var;
};
// relu(Σ_b batch_norm2d(x_b, bn_b...)) for 1 to 3 branches x_b of one shape [N, C, H, W] (y in x_0's
// layout, the others converted to it): a RepVGG block's BNs, branch sum and ReLU in two passes over memory
// each way, with the same values, running-statistics updates and gradients as the composed ops (training
// and eval as batch_norm2d). relu false: the sum alone, Σ_b batch_norm2d(x_b, bn_b...), for a ReLU that
// comes later (ResNet's, after the residual add of an identity shortcut). relu is the last argument so
// that the callers' positional momentum and eps keep their meaning.
Tensor bn_add_relu(const std::vector<Tensor>& xs, const std::vector<BnParams>& bns, bool training,
                   float momentum = 0.1f, float eps = 1e-5f, bool relu = true);

// --- pool.cpp ----------------------------------------------------------------------------------------
// x [N, C, H, W] -> [N, C, H', W'], H' = (H + 2 padding − kernel) / stride + 1 (floor; W' likewise): each
// output the largest value of its kernel x kernel window, the padding −inf, as torch's nn.MaxPool2d(kernel,
// stride, padding) (padding ≤ kernel / 2, as torch asks). The window's argmax is its first largest value in
// row-major order, as PyTorch's CPU kernel (a NaN makes the output NaN, the argmax the window's last NaN);
// the backward routes each output's gradient to it. A blocked x stays blocked (y in x's layout).
Tensor max_pool2d(const Tensor& x, int kernel, int stride, int padding = 0);

// --- linear.cpp --------------------------------------------------------------------------------------
// x [N, I], w [O, I], bias [O] or undefined -> [N, O]  (y = x wᵀ + b, as torch.nn.functional.linear)
Tensor linear(const Tensor& x, const Tensor& w, const Tensor& bias);

// --- batchnorm.cpp -----------------------------------------------------------------------------------
// The batch statistics of a training-mode forward, for callers that fold BN (OABN, RepQ).
struct BatchStats {
  Tensor mean;  // [C], batch mean
  Tensor var;   // [C], biased batch variance (the one used for normalizing)
};
// x [N, C, H, W]; gamma, beta, running_mean, running_var [C].
// training: normalize with the batch mean and biased variance, then update the running statistics
// in place with momentum (running = (1 - m) running + m batch, the running variance unbiased: n/(n-1)).
// eval: normalize with the running statistics. PyTorch's conventions (momentum 0.1, eps 1e-5).
Tensor batch_norm2d(const Tensor& x, const Tensor& gamma, const Tensor& beta, const Tensor& running_mean,
                    const Tensor& running_var, bool training, float momentum = 0.1f, float eps = 1e-5f,
                    BatchStats* stats = nullptr);
// Sync-BN (data-parallel training, docs/distributed.md): with `sum` set, every training-mode BN of
// batch_norm2d and bn_add_relu passes its per-channel sums and value count through sum(values, n),
// which adds them up over the processes in place: the batch statistics (forward) and the sums of its
// input gradient (backward) are then the global batch's, while the gradients of gamma and beta stay this
// process's (the gradient all-reduce averages them as any other). The moments are taken about the
// running mean, which must be the same on every process. CPU only; nullptr (the default): off.
void set_batch_norm_sync(void (*sum)(double* values, size_t n));

// --- quantize.cpp: uniform fake quantization with a learned step (LSQ, layers/quantizer.h) -------------
// x [R, ...] (any shape), step [1] or [R] (one per dim-0 row) ->
//     y = (clamp(round(x / s) + z, q_min, q_max) − z) · s         (round half to even)
// Backward (LSQ Eq. 3, the round straight-through): d y / d x = 1 where q_min ≤ round(x/s) + z ≤ q_max,
// else 0; d y / d s = round(x/s) − x/s inside, (clamped code − z) outside; the step's gradient, summed
// over its values, times step_grad_scale (LSQ's g = 1/sqrt(N Q_P)). The same as the composed ops
// (div, round_ste, add_scalar, clamp, mul) with the step scaled as s·g + sg(s − s·g), in two passes.
Tensor fake_quantize(const Tensor& x, const Tensor& step, int zero_point, int q_min, int q_max, float step_grad_scale);
// A layer's bias where its input and weight are quantized, as integer kernels hold it: int32 codes
// c_o = round(b_o / t_o) of step t_o = s_x · s_w,o (s_w [1] or [O], one step per output channel), zero point 0.
// Throws naming `name` for a code beyond int32. The training side (layers::eval_bias) and the integer
// model (deploy/) round with this one function.
struct BiasCodes {
  std::vector<int32_t> codes;
  std::vector<float> steps;  // t_o
};
BiasCodes bias_codes(const std::vector<float>& b, float s_x, const std::vector<float>& s_w, const std::string& name);
// x (any shape, requires grad), values (x's shape, not differentiated) -> y = values, with d y / d x = 1:
// the straight-through estimator of a quantizer whose values are computed elsewhere (the cluster
// quantizer's codebook values, layers/cluster_quantizer.h). Unlike x + sg(values − x), y is values
// bit for bit.
Tensor straight_through(const Tensor& x, const Tensor& values);

// x [N, C, H, W] (either layout) -> [2, C]: row 0 each channel's mean μ = (1/M) Σ_{n,h,w} x, row 1 its biased
// variance (1/M) Σ_{n,h,w} (x − μ)², M = N·H·W (RepQ-BN's batch statistics, layers/bn_fold.h; select splits
// them). The backward is one pass: dx = g_μ / M + 2 g_var (x − μ) / M.
Tensor channel_mean_var(const Tensor& x);

// --- loss.cpp ----------------------------------------------------------------------------------------
// logits [N, K], labels i32 [N] -> [] mean softmax cross-entropy, with optional label smoothing ε:
// target = (1 - ε) onehot + ε / K (as torch.nn.functional.cross_entropy(label_smoothing=ε)).
Tensor cross_entropy(const Tensor& logits, const Tensor& labels, float label_smoothing = 0.0f);
// Knowledge distillation (Hinton et al. 2015, "Distilling the Knowledge in a Neural Network", Sec. 2):
// student, teacher [N, K] -> [] the soft-target loss
//     T² · (1/N) Σ_i KL(softmax(teacher_i / T) ‖ softmax(student_i / T))
// (T² keeps its gradient's scale as T changes: d / d student = T (p_s − p_t) / N). The teacher is a target:
// no gradient flows to it. T > 0.
Tensor distillation_loss(const Tensor& student, const Tensor& teacher, float temperature);
// Number of rows whose label is among the k largest logits (not differentiable).
int64_t topk_correct(const Tensor& logits, const Tensor& labels, int k);

}  // namespace engine
