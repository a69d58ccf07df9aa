#include "deploy/integer_model.h"

#include <fmt/format.h>

#include <algorithm>

#include "engine/cuda/cuda_backend.h"

namespace deploy {

using engine::DType;
using engine::Shape;
using engine::cpu::QConv;
using engine::cpu::QConvSpec;

IntegerModel::IntegerModel(const Int8Model& m, engine::Device device) : m_(m), device_(device) {
  if (device_ == engine::Device::cuda) engine::cuda::require();
}

IntegerModel::Plan IntegerModel::build(const Shape& x) const {
  const std::vector<Int8Layer>& ls = m_.layers;
  const size_t fc = ls.size() - 1;
  Plan p;
  p.layers.resize(ls.size());
  const int64_t n = x[0];
  std::vector<int64_t> h(ls.size()), w(ls.size());  // each layer's output size
  std::vector<std::vector<size_t>> readers(ls.size());  // the layers that read each layer's output as their input
  std::vector<bool> residual_source(ls.size());           // ... and whether one reads it as its residual
  for (size_t i = 0; i < ls.size(); i++) {
    if (ls[i].source >= 0) readers[ls[i].source].push_back(i);
    if (ls[i].residual >= 0) residual_source[ls[i].residual] = true;
  }
  int64_t biggest_gpu_in = 0;
  for (size_t i = 0; i < ls.size(); i++) {
    const Int8Layer& l = ls[i];
    Layer& layer = p.layers[i];
    const int64_t ih = l.fc ? 1 : l.source < 0 ? x[2] : h[l.source], iw = l.fc ? 1 : l.source < 0 ? x[3] : w[l.source];
    const int64_t oh = l.fc ? 1 : (ih - 1) / l.stride + 1, ow = l.fc ? 1 : (iw - 1) / l.stride + 1;  // k odd, padding (k − 1) / 2
    h[i] = l.max_pool ? (oh - 1) / 2 + 1 : oh, w[i] = l.max_pool ? (ow - 1) / 2 + 1 : ow;
    // u8 out where every reader is a quantized conv (the FC reads the pooled f32), all at one scale
    layer.codes_out = l.quantized && !l.fc && !readers[i].empty();
    for (size_t r : readers[i]) layer.codes_out &= ls[r].quantized && !ls[r].fc;
    if (layer.codes_out) {
      const Int8Layer& first = ls[readers[i][0]];
      for (size_t r : readers[i])
        ENGINE_CHECK(ls[r].input_scale == first.input_scale && ls[r].input_zero_point == first.input_zero_point &&
                         ls[r].widths.act == first.widths.act,
                     "layers " + first.name + " and " + ls[r].name + " read the output of " + l.name + " with different quantizers");
      layer.out_scale = first.input_scale;
      layer.out_max = (1 << first.widths.act) - 1;
    }
    const bool shortcut = l.residual >= 0;
    // a shortcut whose float output its first reader (the block's conv1) quantized: it adds that reader's codes
    if (shortcut && !p.layers[l.residual].codes_out && !readers[l.residual].empty() &&
        p.layers[readers[l.residual][0]].quantize_input)
      layer.shortcut_codes = (int)readers[l.residual][0];
    QConvSpec q;
    q.s = {n, l.in, ih, iw, l.out, l.kernel, l.kernel, oh, ow, l.stride, (l.kernel - 1) / 2, (l.kernel - 1) / 2, l.groups, true};
    q.src = l.quantized ? DType::u8 : DType::f32;
    q.src_nchw = l.source < 0;
    q.relu = l.relu && !shortcut;  // a shortcut's ReLU follows the add
    q.dst = layer.codes_out && !shortcut ? DType::u8 : DType::f32;
    layer.in_values = n * l.in * ih * iw;
    layer.out_values = n * l.out * h[i] * w[i];
    // its input is float: the image, the FC's pooled features, or an FP32 layer's output
    layer.quantize_input = l.quantized && (l.fc || l.source < 0 || !p.layers[l.source].codes_out);
    if (layer.quantize_input) layer.codes = Tensor::empty({layer.in_values}, DType::u8);
    layer.gpu = device_ == engine::Device::cuda && l.quantized && !layer.quantize_input && !l.fc && !shortcut && !l.max_pool &&
                !residual_source[i];
    if (l.quantized) {
      q.src_zero_point = l.input_zero_point;
      q.src_max = (1 << l.widths.act) - 1;
      const float next_scale = q.dst == DType::u8 ? layer.out_scale : 1.0f;
      for (size_t k = 0; k < l.weight_scale.size(); k++)
        q.scales.push_back((float)((double)l.input_scale * l.weight_scale[k] / next_scale));
      if (q.dst == DType::u8) q.dst_max = layer.out_max;  // the readers' codes, at their width
      if (layer.gpu) {
        layer.weight = Tensor::empty({(int64_t)l.weight_codes.size()}, DType::i8, engine::Device::cuda);
        layer.bias = Tensor::empty({l.out}, DType::i32, engine::Device::cuda);
        engine::cuda::copy_to_device(layer.weight.raw(), l.weight_codes.data(), l.weight_codes.size());
        engine::cuda::copy_to_device(layer.bias.raw(), l.bias_codes.data(), l.bias_codes.size() * sizeof(int32_t));
        if (l.source >= 0 && !p.layers[l.source].gpu) biggest_gpu_in = std::max(biggest_gpu_in, layer.in_values);
      } else {
        layer.conv = std::make_unique<QConv>(q, l.weight_codes.data(), l.bias_codes.data());
      }
    } else {
      layer.conv = std::make_unique<QConv>(q, l.weight.data(), l.bias.data());
    }
    layer.spec = q;
    if (shortcut || l.max_pool) layer.conv_out = Tensor::empty({n * l.out * oh * ow * (q.dst == DType::u8 ? 1 : 4)}, DType::u8);
    const DType out_type = layer.codes_out ? DType::u8 : DType::f32;
    if (!l.fc) layer.out = Tensor::empty({layer.out_values * (out_type == DType::u8 ? 1 : 4)}, DType::u8);
    if (layer.gpu) layer.gpu_out = Tensor::empty({layer.out_values}, DType::u8, engine::Device::cuda);
    if (l.source >= 0 && p.layers[l.source].gpu && !layer.gpu) p.layers[l.source].copy_back = true;
  }
  if (biggest_gpu_in) p.gpu_in = Tensor::empty({biggest_gpu_in}, DType::u8, engine::Device::cuda);
  p.pooled = Tensor::empty({n, ls[fc].in});
  return p;
}

Tensor IntegerModel::forward(const Tensor& x) {
  ENGINE_CHECK(x.dim() == 4 && x.size(1) == 3 && x.dtype() == DType::f32 && x.device() == engine::Device::cpu,
               "expects an f32 cpu image batch [N, 3, H, W], got " + x.str());
  auto it = plans_.find(x.shape().vec());
  if (it == plans_.end()) it = plans_.emplace(x.shape().vec(), build(x.shape())).first;
  Plan& p = it->second;
  last_ = &p;
  const std::vector<Int8Layer>& ls = m_.layers;
  const size_t fc = ls.size() - 1;
  for (size_t i = 0; i < fc; i++) {
    const Int8Layer& l = ls[i];
    Layer& layer = p.layers[i];
    const void* in = l.source < 0 ? x.raw() : p.layers[l.source].out.raw();
    if (layer.quantize_input) {
      engine::cpu::quantize_u8((const float*)in, layer.codes.data<uint8_t>(), layer.in_values, l.input_scale, l.input_zero_point,
                               (1 << l.widths.act) - 1);
      in = layer.codes.raw();
    }
    if (layer.gpu) {
      const Layer& src = p.layers[l.source];
      const void* gpu_in = src.gpu ? src.gpu_out.raw() : p.gpu_in.raw();
      if (!src.gpu) engine::cuda::copy_to_device(p.gpu_in.raw(), in, layer.in_values);
      engine::cuda::qconv_forward(layer.spec, (const uint8_t*)gpu_in, layer.weight.data<int8_t>(), layer.bias.data<int32_t>(),
                                  layer.gpu_out.raw());
      if (layer.copy_back) engine::cuda::copy_to_host(layer.out.raw(), layer.gpu_out.raw(), layer.out_values);
      continue;
    }
    void* conv_out = layer.conv_out.defined() ? layer.conv_out.raw() : layer.out.raw();
    layer.conv->run(in, conv_out);
    if (l.residual >= 0) {  // ReLU(conv + shortcut), then its readers' codes
      const Layer& r = p.layers[l.residual];
      float* y = layer.codes_out ? (float*)layer.conv_out.raw() : (float*)layer.out.raw();  // in place: same index read and written
      if (r.codes_out) {  // zero point 0: every code but the image's follows a ReLU (load_int8 checks)
        engine::cpu::add_shortcut((const float*)layer.conv_out.raw(), r.out.data<uint8_t>(), r.out_scale, 0, y,
                                  layer.out_values, l.relu);
      } else if (layer.shortcut_codes >= 0) {  // a float output its reader quantized
        const Int8Layer& reader = ls[layer.shortcut_codes];
        engine::cpu::add_shortcut((const float*)layer.conv_out.raw(), p.layers[layer.shortcut_codes].codes.data<uint8_t>(),
                                  reader.input_scale, reader.input_zero_point, y, layer.out_values, l.relu);
      } else {
        engine::cpu::add_shortcut((const float*)layer.conv_out.raw(), (const float*)r.out.raw(), y, layer.out_values, l.relu);
      }
      if (layer.codes_out) engine::cpu::quantize_u8(y, layer.out.data<uint8_t>(), layer.out_values, layer.out_scale, 0, layer.out_max);
    }
    if (l.max_pool) {  // the conv's output (codes or f32) pooled into the layer's
      const engine::ConvShape& s = layer.spec.s;
      if (layer.codes_out) engine::cpu::max_pool_nhwc_u8(s.n, s.oh, s.ow, s.o, 3, 2, 1, layer.conv_out.data<uint8_t>(), layer.out.data<uint8_t>());
      else engine::cpu::max_pool_nhwc_f32(s.n, s.oh, s.ow, s.o, 3, 2, 1, (const float*)layer.conv_out.raw(), (float*)layer.out.raw());
    }
  }
  const Int8Layer& head = ls[fc];
  const Int8Layer& last = ls[head.source];
  const Layer& features = p.layers[head.source];
  engine::cpu::avg_pool_nhwc(x.size(0), features.out_values / (x.size(0) * last.out), last.out, (const float*)features.out.raw(), p.pooled.f32());
  const void* in = p.pooled.raw();
  if (p.layers[fc].quantize_input) {
    engine::cpu::quantize_u8(p.pooled.f32(), p.layers[fc].codes.data<uint8_t>(), p.pooled.numel(), head.input_scale, head.input_zero_point,
                             (1 << head.widths.act) - 1);
    in = p.layers[fc].codes.raw();
  }
  Tensor logits = Tensor::empty({x.size(0), head.out});
  p.layers[fc].conv->run(in, logits.raw());
  return logits;
}

int IntegerModel::split_layers() const {
  int n = 0;
  if (last_)
    for (const Layer& l : last_->layers) n += l.conv && l.conv->split();
  return n;
}

std::vector<std::string> IntegerModel::describe() const {
  std::vector<std::string> out;
  if (!last_) return out;
  auto name = [](DType d) { return d == DType::u8 ? "u8" : d == DType::f32 ? "f32" : "i32"; };
  for (size_t i = 0; i < last_->layers.size(); i++) {
    const Layer& l = last_->layers[i];
    const Int8Layer& il = m_.layers[i];
    const models::LayerBits& w = il.widths;
    std::string tail = il.residual >= 0 ? " + " + m_.layers[il.residual].name : "";
    if (il.max_pool) tail += ", max pool";
    out.push_back(fmt::format("{:<20} {:<5} {:>3} -> {:<3}  {}{}", il.name, il.quantized ? fmt::format("W{}/A{}", w.weight, w.act) : "fp32",
                              l.quantize_input ? "f32" : name(l.spec.src), l.codes_out ? "u8" : "f32",
                              l.conv ? l.conv->impl() : "cuda:im2col+cublasGemmEx", tail));
  }
  return out;
}

}  // namespace deploy
