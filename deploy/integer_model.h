// The quantized deploy model (deploy/int8_model.h) run with integer kernels on the CPU (engine/cpu/int8.h):
// the deploy model's structure, layer by layer, each layer one oneDNN convolution (the FC a 1x1 one):
//
//   image f32 [N, 3, H, W] ─ stage0 ─ stage1.0 ─ ... ─ stage4.0 ─ avg pool ─ linear ─ logits f32 [N, K]
//
// A quantized layer whose input comes from a quantized block reads that block's u8 codes (NHWC): the block
// requantized its accumulator to them in its own epilogue, s_x s_w[o] / s_x' with the ReLU and the code
// range as a clip. Where a quantized layer's input is float (the image, an FP32 stage0's output, the pooled
// features), quantize_u8 makes its codes first. The last block writes f32 for the pooling.
//
// On CUDA (device cuda), the quantized blocks whose input is a block's u8 codes run on the GPU
// (engine/cuda/int8.cu: im2col, cuBLAS's int8 GEMM, the same epilogue); the layers around them (the FP32
// stage0, the image's and the FC's quantize_u8, the pooling, the FC) stay on the host, the codes copied to the
// GPU before the first such block and the last one's f32 output back after it.
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
    bool quantize_input = false;  // its input is float: quantize_u8 first
    int64_t in_bytes = 0, out_bytes = 0;
  };
  struct Plan {
    std::vector<Layer> layers;
    Tensor a, b;                  // ping-pong activation buffers (bytes), the largest layer's size
    Tensor gpu_a, gpu_b;          // the same on the GPU, where a layer runs there
    Tensor pooled;                // f32 [N, C]
    engine::Shape out_shape;      // the last block's output [N, C, OH, OW]
  };
  Plan build(const engine::Shape& x) const;

  Int8Model m_;
  engine::Device device_;
  std::map<std::vector<int64_t>, Plan> plans_;
  const Plan* last_ = nullptr;
};

}  // namespace deploy
