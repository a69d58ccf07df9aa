#include "layers/reparam.h"

#include <map>
#include <mutex>
#include <tuple>

#include "engine/ops.h"

namespace layers {

using namespace engine;

// t = γ / sqrt(σ² + ε) [C]
Tensor bn_scale(const BnTensors& bn) { return mul(bn.gamma, rsqrt(add_scalar(bn.var, bn.eps))); }

static Tensor per_output_channel(const Tensor& t) { return reshape(t, Shape{t.size(0), 1, 1, 1}); }

KernelBias fold_bn(const Tensor& kernel, const BnTensors& bn) {
  ENGINE_CHECK(kernel.dim() == 4 && bn.gamma.shape() == Shape{kernel.size(0)},
               "kernel " + kernel.str() + ", BN gamma " + bn.gamma.str());
  Tensor t = bn_scale(bn);
  return {mul(kernel, per_output_channel(t)), sub(bn.beta, mul(bn.mean, t))};
}

KernelBias fold_bn(const KernelBias& kb, const BnTensors& bn) {
  ENGINE_CHECK(kb.kernel.dim() == 4 && kb.bias.shape() == Shape{kb.kernel.size(0)} &&
                   bn.gamma.shape() == Shape{kb.kernel.size(0)},
               "kernel " + kb.kernel.str() + ", bias " + kb.bias.str() + ", BN gamma " + bn.gamma.str());
  Tensor t = bn_scale(bn);
  return {mul(kb.kernel, per_output_channel(t)), add(bn.beta, mul(sub(kb.bias, bn.mean), t))};
}

Tensor identity_kernel(int64_t channels, int groups, Device device) {
  ENGINE_CHECK(groups >= 1 && channels % groups == 0,
               std::to_string(channels) + " channels in " + std::to_string(groups) + " groups");
  static std::mutex mutex;
  // never destroyed: a CUDA tensor must not be freed after the backend has shut down at exit
  static auto* made = new std::map<std::tuple<int64_t, int, Device>, Tensor>;
  std::lock_guard<std::mutex> lock(mutex);
  Tensor& k = (*made)[{channels, groups, device}];
  if (!k.defined()) {
    const int64_t per_group = channels / groups;
    Tensor host = Tensor::zeros(Shape{channels, per_group, 3, 3});
    float* p = host.f32();
    for (int64_t i = 0; i < channels; i++) p[(i * per_group + i % per_group) * 9 + 4] = 1.0f;
    k = host.to(device);
  }
  return k;
}

KernelBias merge_repvgg(const Tensor& k3, const BnTensors& bn3, const Tensor& k1, const BnTensors& bn1,
                        const BnTensors* identity, int groups) {
  ENGINE_CHECK(k3.dim() == 4 && k3.size(2) == 3 && k3.size(3) == 3, "3x3 kernel " + k3.str());
  ENGINE_CHECK(k1.shape() == (Shape{k3.size(0), k3.size(1), 1, 1}), "1x1 kernel " + k1.str() + " beside " + k3.str());
  KernelBias dense = fold_bn(k3, bn3), one = fold_bn(k1, bn1);
  Tensor kernel = add(dense.kernel, pad2d(one.kernel, 1)), bias = add(dense.bias, one.bias);
  if (identity) {
    ENGINE_CHECK(k3.size(0) == k3.size(1) * groups, "an identity branch needs in == out channels");
    KernelBias id = fold_bn(identity_kernel(k3.size(0), groups, k3.device()), *identity);
    kernel = add(kernel, id.kernel);
    bias = add(bias, id.bias);
  }
  return {kernel, bias};
}

Tensor pad_to_3x3(const Tensor& k) {
  ENGINE_CHECK(k.dim() == 4 && (k.size(2) == 1 || k.size(2) == 3) && (k.size(3) == 1 || k.size(3) == 3),
               "a kernel of 1 or 3 rows and columns to pad to 3x3, got " + k.str());
  return pad2d(k, (3 - (int)k.size(2)) / 2, (3 - (int)k.size(3)) / 2);
}

KernelBias merge_acb(const Tensor& square, const BnTensors& square_bn, const Tensor& hor, const BnTensors& hor_bn,
                     const Tensor& ver, const BnTensors& ver_bn) {
  ENGINE_CHECK(square.dim() == 4 && square.size(2) == 3 && square.size(3) == 3, "3x3 kernel " + square.str());
  const int64_t o = square.size(0), i = square.size(1);
  ENGINE_CHECK(hor.shape() == (Shape{o, i, 1, 3}), "1x3 kernel " + hor.str() + " beside " + square.str());
  ENGINE_CHECK(ver.shape() == (Shape{o, i, 3, 1}), "3x1 kernel " + ver.str() + " beside " + square.str());
  const KernelBias s = fold_bn(square, square_bn), h = fold_bn(hor, hor_bn), v = fold_bn(ver, ver_bn);  // BN fusion
  return {add(add(s.kernel, pad_to_3x3(h.kernel)), pad_to_3x3(v.kernel)), add(add(s.bias, h.bias), v.bias)};  // branch fusion
}

KernelBias qarepvgg_sum(const Tensor& k3, const BnTensors& bn3, const Tensor& k1, bool identity, int groups) {
  ENGINE_CHECK(k3.dim() == 4 && k3.size(2) == 3 && k3.size(3) == 3, "3x3 kernel " + k3.str());
  ENGINE_CHECK(k1.shape() == (Shape{k3.size(0), k3.size(1), 1, 1}), "1x1 kernel " + k1.str() + " beside " + k3.str());
  KernelBias dense = fold_bn(k3, bn3);
  Tensor kernel = add(dense.kernel, pad2d(k1, 1));
  if (identity) {
    ENGINE_CHECK(k3.size(0) == k3.size(1) * groups, "an identity branch needs in == out channels");
    kernel = add(kernel, identity_kernel(k3.size(0), groups, k3.device()));
  }
  return {kernel, dense.bias};
}

KernelBias merge_qarepvgg(const Tensor& k3, const BnTensors& bn3, const Tensor& k1, bool identity, int groups,
                          const BnTensors& bn) {
  return fold_bn(qarepvgg_sum(k3, bn3, k1, identity, groups), bn);
}

}  // namespace layers
