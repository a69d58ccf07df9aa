// ONNX export of a deploy-form model (https://onnx.ai, onnx/onnx.proto), written with our wire-format writer
// (interop/protobuf.h). Opset 13, IR version 7. The graph, one node group per layer of models/arch.h's list:
//
//   input [batch, 3, H, W] float32 NCHW, normalized: (RGB / 255 - mean) / std per channel
//   per layer:  Conv(its source's output, <layer>.rbr_reparam.weight, .bias; k x k, stride, pads (k − 1) / 2,
//               group) [-> Add(its shortcut's output)] [-> Relu] [-> MaxPool(3, stride 2, pads 1)]
//               (RepVGG: Conv -> Relu from block to block; ResNet-18: the shortcut Add in conv2, none in the
//               downsample, the max pool in the ImageNet stem)
//   GlobalAveragePool -> Flatten(axis 1) -> Gemm(<fc>.weight, <fc>.bias, transB 1)  (<fc>: linear | fc)
//   (in QDQ form, see OnnxOptions::qdq, the quantized layers' inputs come through QDQ nodes)
//   logits [batch, num_classes] float32
//
// "batch" is a symbolic dimension; H and W are fixed at the export size. Initializers carry the
// state-dict names, the weights as raw little-endian float32.
#pragma once
#include <string>

#include "datasets/transforms.h"
#include "models/model.h"

namespace interop {

struct OnnxOptions {
  int image_size = 32;       // H = W
  data::Normalize norm = data::kCifar10Norm;
  std::string norm_name = "CIFAR-10";  // named in the input's doc_string
  std::string source;        // e.g. the checkpoint path, recorded in the model's doc_string
  // QDQ form: each conv and Gemm with quantizers (layers/quantizer.h) gets, on its input, QuantizeLinear ->
  // DequantizeLinear at the act quantizer's step and zero point (uint8 unsigned codes, int8 signed; a Clip
  // first below 8 bits); its weight as int8 codes (per axis 0 with per-channel steps) through
  // DequantizeLinear; its bias as int32 codes of step s_x · s_w, zero point 0, through DequantizeLinear.
  // Layers without quantizers stay float. Throws for codes of more than 8 bits.
  bool qdq = false;
};

// The serialized ModelProto. Throws when the model is not in deploy form.
std::string to_onnx(models::Model& model, const OnnxOptions& opt);

}  // namespace interop
