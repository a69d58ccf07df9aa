// Convolution kernels on oneDNN: the forward, backward-data and backward-weights primitives, each built
// once per shape and cached (dnnl.h). x [N, C, H, W], w [O, C/groups, kh, kw] (oneDNN's goihw when
// grouped: the same bytes), b [O], y [N, O, OH, OW].
//
// Layouts: the primitives run in the layouts oneDNN picks (blocked, nChw16c and the like, wherever the
// channel counts allow), reordered from and to ours on every call. Even with those reorders they run
// 1.5-5x faster than oneDNN's NCHW path (im2col and GEMM) on 3x3 kernels, and on 1x1 kernels from
// 32x32 images with 64 channels up; NCHW wins only on small 1x1 convolutions, by a few milliseconds.
// With s.x_block (s.y_block), x (y) is already in the blocked layout nChw{B}c (ops.h, the activation
// layout): the primitives are made for it and only the (small) weights are reordered, unless oneDNN has only
// its reference kernel for that layout at that shape (then it picks, and the call reorders). conv_channel_block
// asks oneDNN which block its convolutions want on this CPU.
//
// Algorithm: Winograd F(4x4, 3x3) (oneDNN's jit_wino_4x3) where oneDNN has it: 3x3 stride-1 convolutions
// without groups whose channel counts are multiples of 16. On RepVGG's shapes it runs up to 1.9x faster
// than the direct kernels (dev/conv_algorithms.cpp, docs/performance.md); backward-weights on planes under
// 8x8 stays direct (it measured 2x slower there on a busy machine, a little faster on a quiet one), and so does
// every convolution of fewer than kWinogradMinPixels output pixels (batch 1 on small planes). Its
// results differ from the direct ones by ~1e-6 rms (relative): float32 rounding. Where oneDNN has no Winograd
// (AVX2 CPUs), 3x3 stride-1 convolutions in nChw8c (channels in multiples of 8) run ours instead (winograd.h:
// F(4x4, 3x3), or F(2x2, 3x3) on small planes; forward, backward-data and weight gradient) while their
// transformed kernels fit the L3 cache, at any batch: with fewer tiles than threads ours splits the output
// channels among them, and a frozen weight's kernels are transformed once (RepVGG-A0's 14x14 192-channel layer
// at batch 1, deployed: 0.49 ms against 0.75 direct, capped AMD EPYC, dev/winograd.cpp).
// REPQ_WINOGRAD=0 in the environment keeps every convolution direct.
#include <cstdlib>
#include <cstring>

#include "engine/cpu/dnnl.h"
#include "engine/cpu/winograd.h"
#include "engine/kernels.h"

namespace engine::cpu {

using dnnl::memory;
using tag = memory::format_tag;

enum ConvOp : int64_t { conv_forward_op = 1, conv_backward_data_op, conv_backward_weight_op };

static DnnlKey conv_key(ConvOp op, const ConvShape& s) {
  return {op, s.n, s.c, s.h, s.w, s.o, s.kh, s.kw, s.stride, s.ph, s.pw, s.groups, s.bias, s.x_block, s.y_block};
}

struct ConvDescs {
  memory::desc x, w, b, y;  // b is empty without bias
  memory::dims stride, pad;
};

// ours: our buffers' layouts. any: weights (and NCHW activations) left for oneDNN to choose, blocked
// activations taken as they are. any_all: activations too, for a shape whose blocked layout has only a
// reference kernel (DnnlCall then reorders our blocked buffers into what oneDNN chose).
enum Layouts { ours, any, any_all };

static ConvDescs conv_descs(const ConvShape& s, Layouts layouts) {
  auto md = [&](memory::dims dims, tag plain) {
    return memory::desc(dims, memory::data_type::f32, layouts == ours ? plain : tag::any);
  };
  auto act = [&](memory::dims dims, int64_t block) {
    if (block == 0 || layouts == any_all) return md(dims, tag::nchw);
    ENGINE_CHECK(block == 8 || block == 16, "channel block " + std::to_string(block) + ": 8 or 16 expected");
    return memory::desc(dims, memory::data_type::f32, block == 8 ? tag::nChw8c : tag::nChw16c);
  };
  memory::desc w = s.groups == 1 ? md({s.o, s.c, s.kh, s.kw}, tag::oihw)
                                 : md({s.groups, s.o / s.groups, s.c / s.groups, s.kh, s.kw}, tag::goihw);
  memory::desc b = s.bias ? memory::desc({s.o}, memory::data_type::f32, tag::x) : memory::desc();
  return {act({s.n, s.c, s.h, s.w}, s.x_block), w, b, act({s.n, s.o, s.oh, s.ow}, s.y_block),
          {s.stride, s.stride}, {s.ph, s.pw}};
}

// Below this many output pixels (N x OH x OW) oneDNN's Winograd has too few 4x4 tiles to pay for its transforms: at
// batch 1, RepVGG-A0's 14x14 and 7x7 layers ran slower than the direct kernel (the whole forward 45-47 img/s
// with Winograd there, 52-61 without; AMD EPYC, AVX-512, 2 threads, docs/performance.md). Batched shapes
// (batch 32 at 7x7, CIFAR's batch 128 at 2x2) stay above it.
constexpr int64_t kWinogradMinPixels = 200;

static bool winograd_enabled() {
  static const bool enabled = [] {
    const char* e = std::getenv("REPQ_WINOGRAD");
    return !e || std::strcmp(e, "0") != 0;
  }();
  return enabled;
}

static bool onednn_winograd_fits(const ConvShape& s, ConvOp op) {
  return winograd_enabled() && s.kh == 3 && s.kw == 3 && s.stride == 1 && s.ph == 1 && s.pw == 1 && s.groups == 1 && s.c % 16 == 0 &&
         s.o % 16 == 0 && s.n * s.oh * s.ow >= kWinogradMinPixels && (op != conv_backward_weight_op || s.oh * s.ow >= 64);
}

static dnnl::convolution_forward::primitive_desc forward_pd(const ConvShape& s, dnnl::algorithm algorithm,
                                                            Layouts layouts = any);

// Whether oneDNN makes Winograd convolutions on this CPU (asked once, of a 64 -> 64 channel 3x3 on 16x16).
static bool onednn_has_winograd() {
  static const bool has = [] {
    try {
      forward_pd(ConvShape{32, 64, 16, 16, 64, 3, 3, 16, 16, 1, 1, 1, 1, false}, dnnl::algorithm::convolution_winograd);
      return true;
    } catch (const dnnl::error&) {
      return false;
    }
  }();
  return has;
}

bool conv_own_winograd() {
  static const bool own = winograd_enabled() && winograd_available() && !onednn_has_winograd();
  return own;
}

// The tile of our Winograd for a convolution that would otherwise run oneDNN's direct kernel only because
// oneDNN has no Winograd here; none where ours does not take it. No kWinogradMinPixels: see the top.
static WinogradTile own_winograd(const ConvShape& s) {
  if (!conv_own_winograd() || !winograd_fits(s)) return WinogradTile::none;
  return winograd_tile(s);
}

static bool is_reference(const dnnl::primitive_desc& pd) { return std::strncmp(pd.impl_info_str(), "ref", 3) == 0; }

// make(algorithm, layouts) -> a primitive descriptor: Winograd where it fits and oneDNN makes one, else
// direct; in the activations' own layouts unless oneDNN has only its reference kernel for them there (3x3
// weight gradients on 2x2 planes in nChw8c, on AVX2), then in the layouts it picks.
template <class Make>
static auto with_algorithm(const ConvShape& s, ConvOp op, Make make) {
  auto fast = [&](dnnl::algorithm a) {
    auto pd = make(a, any);
    if ((s.x_block || s.y_block) && is_reference(pd)) {
      try {
        if (auto other = make(a, any_all); !is_reference(other)) return other;
      } catch (const dnnl::error&) {  // none: the reference kernel it is
      }
    }
    return pd;
  };
  if (onednn_winograd_fits(s, op)) {
    try {
      return fast(dnnl::algorithm::convolution_winograd);
    } catch (const dnnl::error&) {  // not implemented for this case: direct
    }
  }
  return fast(dnnl::algorithm::convolution_direct);
}

// Also the hint that makes the backward primitives pick matching implementations and layouts. Always the
// training kind: for inference, Winograd would want the weights in its own transformed format (reordered on
// every call, and that reorder crashes with a user scratchpad in oneDNN 2.6).
static dnnl::convolution_forward::primitive_desc forward_pd(const ConvShape& s, dnnl::algorithm algorithm,
                                                            Layouts layouts) {
  ConvDescs d = conv_descs(s, layouts);
  dnnl::convolution_forward::desc desc(dnnl::prop_kind::forward_training, algorithm, d.x, d.w, d.b, d.y, d.stride,
                                       d.pad, d.pad);
  return {desc, dnnl_attr(), dnnl_engine()};
}

// y = conv(x, w) + b, then the ReLU where `relu`: ours applies it in its output transform; after oneDNN's
// kernels, our ReLU in place, not oneDNN's eltwise_relu post-op, which turns NaN into 0.
static void forward(const ConvShape& s, const float* x, const float* w, const float* b, float* y, Storage* frozen_w,
                    bool relu) {
  if (const WinogradTile tile = own_winograd(s); tile != WinogradTile::none)
    return winograd_forward(s, x, w, b, y, tile, frozen_w, relu);
  DnnlCall& call = dnnl_call(conv_key(conv_forward_op, s), [&] {
    ConvDescs d = conv_descs(s, ours);
    std::vector<DnnlArg> args = {{DNNL_ARG_SRC, d.x, false}, {DNNL_ARG_WEIGHTS, d.w, false}};
    if (s.bias) args.push_back({DNNL_ARG_BIAS, d.b, false});
    args.push_back({DNNL_ARG_DST, d.y, true});
    return DnnlCall(with_algorithm(s, conv_forward_op, [&](dnnl::algorithm a, Layouts l) { return forward_pd(s, a, l); }),
                    args);
  });
  if (s.bias) call.run({x, w, b, y}, frozen_w);
  else call.run({x, w, y}, frozen_w);
  if (relu) unary_forward(UnaryOp::relu, y, y, s.n * s.o * s.oh * s.ow, 0.f, 0.f);
}

void conv2d_forward(const ConvShape& s, const float* x, const float* w, const float* b, float* y, Storage* frozen_w) {
  forward(s, x, w, b, y, frozen_w, false);
}

void conv2d_relu_forward(const ConvShape& s, const float* x, const float* w, const float* b, float* y,
                         Storage* frozen_w) {
  forward(s, x, w, b, y, frozen_w, true);
}

// gx [N, C, H, W] = the transposed convolution of gy [N, O, OH, OW] with w.
void conv2d_backward_data(const ConvShape& shape, const float* gy, const float* w, float* gx) {
  ConvShape s = shape;
  s.bias = false;  // irrelevant here: one primitive serves convolutions with and without bias
  if (const WinogradTile tile = own_winograd(s); tile != WinogradTile::none) return winograd_backward_data(s, gy, w, gx, tile);
  DnnlCall& call = dnnl_call(conv_key(conv_backward_data_op, s), [&] {
    auto pd = with_algorithm(s, conv_backward_data_op, [&](dnnl::algorithm a, Layouts l) {
      ConvDescs d = conv_descs(s, l);
      dnnl::convolution_backward_data::desc desc(a, d.x, d.w, d.y, d.stride, d.pad, d.pad);
      return dnnl::convolution_backward_data::primitive_desc(desc, dnnl_attr(), dnnl_engine(), forward_pd(s, a, l));
    });
    ConvDescs p = conv_descs(s, ours);
    return DnnlCall(pd, {{DNNL_ARG_DIFF_DST, p.y, false}, {DNNL_ARG_WEIGHTS, p.w, false}, {DNNL_ARG_DIFF_SRC, p.x, true}});
  });
  call.run({gy, w, gx});
}

// gw [O, C/groups, kh, kw] from x and gy; gb [O] = gy summed over N, OH, OW when s.bias.
void conv2d_backward_weight(const ConvShape& s, const float* x, const float* gy, float* gw, float* gb) {
  if (const WinogradTile tile = own_winograd(s); tile != WinogradTile::none)
    return winograd_backward_weight(s, x, gy, gw, gb, tile);
  DnnlCall& call = dnnl_call(conv_key(conv_backward_weight_op, s), [&] {
    auto pd = with_algorithm(s, conv_backward_weight_op, [&](dnnl::algorithm a, Layouts l) {
      ConvDescs d = conv_descs(s, l);
      dnnl::convolution_backward_weights::desc desc(a, d.x, d.w, d.b, d.y, d.stride, d.pad, d.pad);
      return dnnl::convolution_backward_weights::primitive_desc(desc, dnnl_attr(), dnnl_engine(), forward_pd(s, a, l));
    });
    ConvDescs p = conv_descs(s, ours);
    std::vector<DnnlArg> args = {{DNNL_ARG_SRC, p.x, false}, {DNNL_ARG_DIFF_DST, p.y, false},
                                 {DNNL_ARG_DIFF_WEIGHTS, p.w, true}};
    if (s.bias) args.push_back({DNNL_ARG_DIFF_BIAS, p.b, true});
    return DnnlCall(pd, args);
  });
  if (s.bias) call.run({x, gy, gw, gb});
  else call.run({x, gy, gw});
}

// The layout of a oneDNN-chosen source for a representative 3x3 convolution (64 -> 64 channels, 16x16,
// batch 32, training): nChw16c where the AVX-512 kernels run, nChw8c on AVX2, else 0 (plain NCHW).
int64_t conv_channel_block() {
  static const int64_t block = [] {
    ConvShape s{32, 64, 16, 16, 64, 3, 3, 16, 16, 1, 1, 1, 1, true};
    const dnnl_memory_desc_t& md = forward_pd(s, dnnl::algorithm::convolution_direct).src_desc().data;
    if (md.format_kind != dnnl_blocked) return int64_t{0};
    const auto& blk = md.format_desc.blocking;
    const bool channels = blk.inner_nblks == 1 && blk.inner_idxs[0] == 1;
    return channels && (blk.inner_blks[0] == 8 || blk.inner_blks[0] == 16) ? int64_t{blk.inner_blks[0]} : int64_t{0};
  }();
  return block;
}

}  // namespace engine::cpu
