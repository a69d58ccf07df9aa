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
  Plan p;
  int64_t n = x[0], h = x[2], w = x[3], biggest = 0;
  bool any_gpu = false;
  const size_t fc = m_.layers.size() - 1;
  for (size_t i = 0; i < m_.layers.size(); i++) {
    const Int8Layer& l = m_.layers[i];
    QConvSpec q;
    const int64_t oh = l.fc ? 1 : (h - 1) / l.stride + 1, ow = l.fc ? 1 : (w - 1) / l.stride + 1;
    q.s = {n, l.in, l.fc ? 1 : h, l.fc ? 1 : w, l.out, l.kernel, l.kernel, oh, ow, l.stride, (l.kernel - 1) / 2,
           l.groups, true};
    q.src = l.quantized ? DType::u8 : DType::f32;
    q.src_nchw = i == 0;
    q.relu = !l.fc;
    // u8 out where the next layer is a block that reads codes and this one makes them; else f32
    const bool codes_out = l.quantized && i + 1 < fc && m_.layers[i + 1].quantized;
    q.dst = codes_out ? DType::u8 : DType::f32;
    Layer layer;
    // its input is float: the image, the FC's pooled features, or an FP32 layer's output
    layer.quantize_input = l.quantized && (i == 0 || i == fc || !m_.layers[i - 1].quantized);
    const bool gpu = device_ == engine::Device::cuda && l.quantized && !layer.quantize_input && i < fc;
    if (l.quantized) {
      q.src_zero_point = l.input_zero_point;
      q.src_max = (1 << l.widths.act) - 1;
      const float next_scale = codes_out ? m_.layers[i + 1].input_scale : 1.0f;
      for (size_t k = 0; k < l.weight_scale.size(); k++)
        q.scales.push_back((float)((double)l.input_scale * l.weight_scale[k] / next_scale));
      if (codes_out) q.dst_max = (1 << m_.layers[i + 1].widths.act) - 1;  // the next layer's codes, at its width
      if (gpu) {
        layer.weight = Tensor::empty({(int64_t)l.weight_codes.size()}, DType::i8, engine::Device::cuda);
        layer.bias = Tensor::empty({l.out}, DType::i32, engine::Device::cuda);
        engine::cuda::copy_to_device(layer.weight.raw(), l.weight_codes.data(), l.weight_codes.size());
        engine::cuda::copy_to_device(layer.bias.raw(), l.bias_codes.data(), l.bias_codes.size() * sizeof(int32_t));
        any_gpu = true;
      } else {
        layer.conv = std::make_unique<QConv>(q, l.weight_codes.data(), l.bias_codes.data());
      }
    } else {
      layer.conv = std::make_unique<QConv>(q, l.weight.data(), l.bias.data());
    }
    layer.spec = q;
    layer.in_bytes = n * l.in * h * w * (q.src == DType::u8 ? 1 : 4);
    layer.out_bytes = n * l.out * oh * ow * (q.dst == DType::u8 ? 1 : 4);
    biggest = std::max({biggest, layer.in_bytes, layer.out_bytes});
    if (i + 1 == fc) p.out_shape = {n, l.out, oh, ow};
    p.layers.push_back(std::move(layer));
    h = oh, w = ow;
  }
  p.a = Tensor::empty({biggest}, DType::u8);
  p.b = Tensor::empty({biggest}, DType::u8);
  if (any_gpu) {
    p.gpu_a = Tensor::empty({biggest}, DType::u8, engine::Device::cuda);
    p.gpu_b = Tensor::empty({biggest}, DType::u8, engine::Device::cuda);
  }
  p.pooled = Tensor::empty({n, m_.layers[fc].in});
  return p;
}

Tensor IntegerModel::forward(const Tensor& x) {
  ENGINE_CHECK(x.dim() == 4 && x.size(1) == 3 && x.dtype() == DType::f32 && x.device() == engine::Device::cpu,
               "expects an f32 cpu image batch [N, 3, H, W], got " + x.str());
  auto it = plans_.find(x.shape().vec());
  if (it == plans_.end()) it = plans_.emplace(x.shape().vec(), build(x.shape())).first;
  Plan& p = it->second;
  last_ = &p;
  const size_t fc = m_.layers.size() - 1;
  const void* cur = x.raw();
  void* bufs[2] = {p.a.raw(), p.b.raw()};
  int next = 0;  // the buffer the next result goes to (never the one `cur` is in)
  auto quantize = [&](const Int8Layer& l, int64_t values) {
    engine::cpu::quantize_u8((const float*)cur, (uint8_t*)bufs[next], values, l.input_scale, l.input_zero_point,
                             (1 << l.widths.act) - 1);
    cur = bufs[next];
    next ^= 1;
  };
  void* gpu_bufs[2] = {p.gpu_a.defined() ? p.gpu_a.raw() : nullptr, p.gpu_b.defined() ? p.gpu_b.raw() : nullptr};
  bool on_gpu = false;  // where `cur` is; the two sides share `next`
  for (size_t i = 0; i < fc; i++) {
    Layer& layer = p.layers[i];
    const engine::ConvShape& s = layer.spec.s;
    if (layer.quantize_input) quantize(m_.layers[i], s.n * s.c * s.h * s.w);
    if (layer.conv) {
      if (on_gpu) {  // the codes back to the host, into the buffer `next` does not name
        engine::cuda::copy_to_host(bufs[next ^ 1], cur, layer.in_bytes);
        cur = bufs[next ^ 1], on_gpu = false;
      }
      layer.conv->run(cur, bufs[next]);
      cur = bufs[next];
    } else {
      if (!on_gpu) {
        engine::cuda::copy_to_device(gpu_bufs[next ^ 1], cur, layer.in_bytes);
        cur = gpu_bufs[next ^ 1], on_gpu = true;
      }
      engine::cuda::qconv_forward(layer.spec, (const uint8_t*)cur, layer.weight.data<int8_t>(), layer.bias.data<int32_t>(),
                                  gpu_bufs[next]);
      cur = gpu_bufs[next];
    }
    next ^= 1;
  }
  if (on_gpu) {  // the last block's f32 output
    engine::cuda::copy_to_host(bufs[next], cur, p.layers[fc - 1].out_bytes);
    cur = bufs[next];
    next ^= 1;
  }
  const Shape& o = p.out_shape;  // the last block's f32 output, NHWC
  engine::cpu::avg_pool_nhwc(o[0], o[2] * o[3], o[1], (const float*)cur, p.pooled.f32());
  cur = p.pooled.raw();
  Layer& head = p.layers[fc];
  if (head.quantize_input) quantize(m_.layers[fc], p.pooled.numel());
  Tensor logits = Tensor::empty({o[0], m_.layers[fc].out});
  head.conv->run(cur, logits.raw());
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
    const models::LayerBits& w = m_.layers[i].widths;
    out.push_back(fmt::format("{:<10} {:<5} {:>3} -> {:<3}  {}", m_.layers[i].name,
                              m_.layers[i].quantized ? fmt::format("W{}/A{}", w.weight, w.act) : "fp32",
                              l.quantize_input ? "f32" : name(l.spec.src), name(l.spec.dst),
                              l.conv ? l.conv->impl() : "cuda:im2col+cublasGemmEx"));
  }
  return out;
}

}  // namespace deploy
