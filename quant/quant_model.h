// A RepVGG model in deploy form run with simulated (fake) quantization, without modifying it:
//
//     block:  y = ReLU(conv(fq_act(x), fq_w(W), b))           W, b: the block's rbr_reparam (3x3 conv, bias)
//     head:   logits = linear(fq_act(gap(y)), fq_w(W_fc), b_fc)
//
// fq_w is the symmetric weight quantizer (per layer or per output channel), fq_act the asymmetric
// activation quantizer (per layer) with its range calibrated on the FP32 model's activations
// (quant/calibration.h). The first conv (stage0) and the last FC keep FP32 weights and inputs unless
// quantize_first_last. Biases stay FP32 (on integer hardware they are 32-bit, with scale s_x s_w).
// The quantized weights are copies: one deploy model serves every bit width.
#pragma once
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "layers/layers.h"
#include "models/repvgg.h"
#include "quant/calibration.h"
#include "quant/quantizers.h"

namespace quant {

struct QuantConfig {
  int weight_bits = 8, act_bits = 8;
  Granularity granularity = Granularity::layer;
  CalibMethod calib = CalibMethod::minmax;
  bool quantize_first_last = false;
};

// A layer whose input can be observed (calibration) and fake-quantized, and whose weight can be swapped
// for a fake-quantized copy.
class QuantLayer : public layers::Module {
 public:
  QuantLayer(std::string name, Tensor weight, Tensor bias);
  void set_fp32();                                            // original weight, input as is
  void set_quantized(int weight_bits, Granularity g, const AffineQuant& act);

  const std::string name;    // the model's module name: "stage0", "stage1.0", ..., "linear"
  const Tensor fp32_weight, bias;
  Tensor weight;             // what forward uses
  std::optional<AffineQuant> act;  // the input quantizer, when quantized
  ActObserver* observer = nullptr; // when set, forward records its input (before any quantization)

 protected:
  Tensor input(const Tensor& x);  // observe, then fake-quantize
};

// A deployed block: ReLU(conv(fq_act(x), weight, bias)) with rbr_reparam's stride, padding and groups.
class QuantBlock : public QuantLayer {
 public:
  QuantBlock(std::string name, const layers::RepBlock& block);
  Tensor forward(const Tensor& x) override;
  const int stride, padding, groups;
};

// The FC head on pooled features: linear(fq_act(x), weight, bias).
class QuantLinear : public QuantLayer {
 public:
  QuantLinear(std::string name, const layers::Linear& fc);
  Tensor forward(const Tensor& x) override;
};

class QuantNet {
 public:
  explicit QuantNet(models::RepVGG& deployed);  // the model must be in deploy form
  Tensor forward(const Tensor& x);              // as RepVGG::forward: the blocks, pooling, the FC

  // Every layer: blocks in order, then the FC (layers().front() is stage0, layers().back() the FC).
  const std::vector<QuantLayer*>& layers() const { return layers_; }
  // observers[i] records layer i's input on the next forwards; an empty vector detaches them.
  void attach_observers(std::vector<ActObserver>* observers);
  void set_fp32();  // everything FP32: forward then equals the model's
  // Quantizes as `c` says, activation ranges from the observers of a calibration pass (one per layer).
  // Returns each layer's activation range ([0, 0] for an FP32 layer).
  std::vector<Range> quantize(const QuantConfig& c, const std::vector<ActObserver>& observers);
  bool quantizes(size_t layer, const QuantConfig& c) const;  // false for the first and last unless asked

 private:
  std::vector<std::shared_ptr<QuantBlock>> blocks_;
  std::shared_ptr<QuantLinear> fc_;
  std::vector<QuantLayer*> layers_;
};

}  // namespace quant
