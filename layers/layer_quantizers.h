// The quantizers of one layer y = op(Q_a(x), Q_w(W), b) — a RepVGG block's 3x3 conv or the model's FC —
// owned in one place for both: Q_a the input's (LSQ, layers/quantizer.h), Q_w the weight's, either LSQ's
// uniform grid or ClusterQAT's codebook (layers/cluster_quantizer.h). Any may be null (FP32 there). They are
// registered on the layer's owner as "<prefix>act_quant" and "<prefix>weight_quant" (a block's prefix is "",
// the model's FC's "linear_"), so their steps and codebooks are its parameters and state-dict entries.
//
// Where both Q_a and Q_w are uniform, the bias in eval is rounded to the accumulator's int32 grid, as integer
// kernels hold it (layers::eval_bias); in training it stays float.
#pragma once
#include <memory>
#include <string>

#include "layers/cluster_quantizer.h"
#include "layers/quantizer.h"

namespace layers {

class LayerQuantizers {
 public:
  LayerQuantizers(Module& owner, std::string prefix) : owner_(owner), prefix_(std::move(prefix)) {}
  LayerQuantizers(const LayerQuantizers&) = delete;
  LayerQuantizers& operator=(const LayerQuantizers&) = delete;

  // Replaces the layer's quantizers; at most one of weight and cluster.
  void set(std::shared_ptr<Quantizer> act, std::shared_ptr<Quantizer> weight,
           std::shared_ptr<ClusterQuantizer> cluster = nullptr);
  // Q_a as another layer's, not registered here: a tensor read by two layers (ResNet's block input, read by
  // conv1 and the downsample shortcut) has one quantizer, the first reader's, as integer kernels hold one set
  // of codes for it. Call after set().
  void share_input(std::shared_ptr<Quantizer> first_readers);
  bool input_shared() const { return act_shared_; }

  Tensor quantize_input(const Tensor& x) const;                   // Q_a(x), x without one
  Tensor quantize_weight(const Tensor& w) const;                  // Q_w(w), w without one
  Tensor quantized_bias(const Tensor& b, bool training) const;    // eval_bias(b, Q_a, Q_w, training)

  std::shared_ptr<Quantizer> act, weight;    // read them; set() changes them
  std::shared_ptr<ClusterQuantizer> cluster;
  std::string layer = "a quantized layer";  // its name in the model, for messages

 private:
  Module& owner_;
  const std::string prefix_;
  bool act_shared_ = false;
};

}  // namespace layers
