// The quantized deploy model (deploy/int8_model.h) run with integer kernels on the CPU (engine/cpu/int8.h):
// the deploy model's layers (models/arch.h LayerSpec) in order, each one oneDNN convolution (the FC a 1x1 one)
// writing its own output buffer, which the layers that read it (its source or its residual) find there:
//
//   RepVGG:    image f32 [N, 3, H, W] ─ stage0 ─ stage1.0 ─ ... ─ stage4.0 ─ avg pool ─ linear ─ logits f32 [N, K]
//   ResNet-18: image ─ conv1 ─ max pool ─ layer1.0.conv1 ─ layer1.0.conv2 (+ the block's input) ─ ...
//              ─ layer2.0.conv1, layer2.0.downsample ─ layer2.0.conv2 (+ the downsample's output) ─ ... ─ fc
//
// A quantized layer whose input comes from a quantized layer reads that layer's u8 codes (NHWC): the writer
// requantized its accumulator to them in its own epilogue, s_x s_w[o] / s_x' with the ReLU and the code range
// as a clip, s_x' its readers' input scale (one for all: a tensor has one quantizer, models/resnet.h). Where a
// quantized layer's input is float (the image, an FP32 layer's output, the pooled features), quantize_u8 makes
// its codes first. A layer read by the FC (through the pooling) writes f32.
//
// ResNet's shortcut: a layer with a residual writes its conv as f32 (s_x s_w[o] (acc + q_b), no ReLU), then
// add_shortcut adds the residual as its first reader takes it (the codes, dequantized, where that reader is
// quantized: the writer's codes, or the reader's own quantize_u8 of a float output; else f32), applies the
// ReLU and the result is
// quantized to its readers' codes: the fake-quantized model's ReLU(conv + Q_a(x)) then Q_a', in two passes. The
// downsample's output is f32 (the training model does not quantize it either). The stem's max pool pools the
// codes (max commutes with the monotone dequantization: exact).
//
// On CUDA (device cuda), the quantized layers with no residual, no pool, not read as a residual, whose input is a
// layer's u8 codes run on the GPU (engine/cuda/int8.cu: im2col, cuBLAS's int8 GEMM, the same epilogue): all of
// RepVGG's but stage0; in ResNet-18 the blocks' conv1 and downsample. The others stay on the host, outputs
// copied across where a reader runs on the other side.
//
// Against ./ptq's fake-quantized forward the codes differ in rounding only: the bias is rounded to the
// accumulator's units (q_b), and the requantized value s_x s_w (acc + q_b) / s_x' is not the fake path's
// float conv result / s_x' to the last bit, so a value near a rounding tie can land one code away.
#pragma once
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "engine/cpu/int8.h"
#include "deploy/int8_model.h"

namespace deploy {

using engine::Tensor;

class IntegerModel {
 public:
  // device cuda: fails (engine::cuda::require) without a CUDA build or a GPU.
  explicit IntegerModel(const Int8Model& m, engine::Device device = engine::Device::cpu);
  // x f32 [N, 3, H, W] (NCHW, normalized) -> logits f32 [N, K]. The first call for an input shape builds that
  // shape's primitives and buffers; later ones create and allocate nothing but the returned tensor (from
  // the caching allocator).
  Tensor forward(const Tensor& x);
  // One line per layer of the last shape run: "stage1.0  u8 -> u8  brgconv:avx512_core_vnni" (a GPU layer:
  // "cuda:im2col+cublasGemmEx").
  std::vector<std::string> describe() const;
  // How many layers of the last shape run engine::cpu::QConv's exact split (a CPU without VNNI, codes that
  // would saturate its s16 pair sums: docs/int8.md).
  int split_layers() const;

  const Int8Model& model() const { return m_; }

 private:
  struct Layer {
    engine::cpu::QConvSpec spec;
    std::unique_ptr<engine::cpu::QConv> conv;  // a host layer
    Tensor weight, bias;          // a GPU layer: s8 codes and s32 bias on the device
    bool gpu = false;
    bool quantize_input = false;  // its input is float: quantize_u8 first, into `codes`
    bool copy_back = false;       // a GPU layer that a host layer reads
    bool codes_out = false;       // its output is its readers' u8 codes, else f32
    float out_scale = 1;          // codes_out: its readers' s_x
    int out_max = 255;            // codes_out: their largest code
    Tensor codes;                 // quantize_input: its input's codes (a shortcut may read them too)
    int shortcut_codes = -1;      // a shortcut layer adding the codes another layer made of a float output: that one
    Tensor conv_out;              // the conv's output before the shortcut add (f32) or the max pool
    Tensor out, gpu_out;          // the layer's output, NHWC [N, OH, OW, O] (after its pool)
    int64_t in_values = 0, out_values = 0;  // its input's values; its output's
  };
  struct Plan {
    std::vector<Layer> layers;    // the FC last
    Tensor gpu_in;                // a GPU layer's input copied from the host, the largest such
    Tensor pooled;                // f32 [N, C]
  };
  Plan build(const engine::Shape& x) const;

  Int8Model m_;
  engine::Device device_;
  std::map<std::vector<int64_t>, Plan> plans_;
  const Plan* last_ = nullptr;
};

}  // namespace deploy
