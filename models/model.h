// The models (models/arch.h's layer lists built from blocks): the one interface every tool above it uses —
// the layers quantization acts on and their quantizers, the QAT set-up — and the two families' forwards,
// RepVGG's plain stack (models/repvgg.h) and torchvision's ResNet-18 (models/resnet.h).
#pragma once
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "engine/random.h"
#include "layers/layers.h"
#include "layers/repvgg_block.h"
#include "models/arch.h"
#include "models/layer_bits.h"

namespace models {

using engine::Tensor;

// Quantization-aware training (./train --qat), as Model::set_qat sets the model up:
//   repq-bn     RepQ-BN: every block in merged mode, BNs folded with batch statistics (RepQ Sec. 4.2)
//   repq-bnest  RepQ-BNEst: merged mode, BN statistics estimated (Sec. 4.3)
//   merged      the "Merged" baseline (RepQ Table 1): the model converted to deploy form first, then QAT
//               of its single convs
//   bnest       full precision in merged mode with estimated BN statistics (no quantizers): one conv per
//               block in training instead of two
//   cluster     ClusterQAT (OABN paper Algorithm 2): merged mode folding the BNs' running statistics, each weight
//               quantizer a per-layer codebook of 2^bits entries (layers/cluster_quantizer.h), bits 1..8
// Each quantized block gets an LSQ weight quantizer (cluster: a ClusterQuantizer) and an LSQ input
// quantizer (layers/quantizer.h); the first layer and the FC stay FP32 unless quantize_first_last.
enum class QatMethod { repq_bn, repq_bnest, merged, bnest, cluster };
// What a method does, one row each (models/repvgg.cpp kQatMethods): code asks these, never the name.
struct QatMethodTraits {
  QatMethod method;
  const char* name;         // as --qat and a checkpoint's "qat" metadata spell it
  bool deploy_first;        // QAT of the deploy form's single convs (merged), else of merged mode
  layers::BnFold fold;      // merged mode's BN fold in training (unused when deploy_first)
  bool full_precision;      // no quantizers (bnest)
  bool cluster;             // weights on a learned codebook (ClusterQAT), else on LSQ's uniform grid
};
const QatMethodTraits& qat_traits(QatMethod m);
inline const char* qat_method_name(QatMethod m) { return qat_traits(m).name; }
std::optional<QatMethod> parse_qat_method(const std::string& name);  // nullopt for an unknown name
extern const char* const kQatMethodNames;  // "repq-bn, repq-bnest, merged, bnest, cluster"

struct QatConfig {
  QatMethod method = QatMethod::repq_bn;
  int bits = 8, act_bits = 8;  // weights, activations (2..16; cluster: weights 1..8, activations 1..16)
  bool per_channel = false;    // weight steps per output channel, else per layer
  bool quantize_first_last = false;
  layers::StepInit init = layers::StepInit::min_error;
  // Not empty: each quantized layer's own widths (Model::quant_layers() order; weight 0: FP32), in place of
  // bits, act_bits and quantize_first_last (./train --layer-bits, models/layer_bits.h)
  std::vector<LayerBits> layers = {};
  const QatMethodTraits& traits() const { return qat_traits(method); }
  LayerBits layer(size_t i, size_t n) const;  // layer i of n's widths
};
// Throws a message starting with `what` (an option or a file) unless bits and act_bits fit `method`.
void check_qat_bits(const QatConfig& c, const std::string& what);
// The checkpoint metadata that records it ("qat", "bits", ...), and back (nullopt for an FP checkpoint);
// `file` names the checkpoint in errors.
std::map<std::string, std::string> qat_metadata(const QatConfig& c);
std::optional<QatConfig> qat_from_metadata(const std::map<std::string, std::string>& md, const std::string& file);

// A layer that quantization acts on (its spec: a block's conv, then ReLU unless relu is off, or the FC), with
// its quantizers.
struct QuantLayer : LayerSpec {
  layers::LayerQuantizers* quant = nullptr;
  bool identity = false;          // a block with an identity branch (layers::RepBlock::has_identity)
  Tensor weight = {}, bias = {};  // the deploy conv's [O, I/g, k, k], [O] (a block in deploy form) or the FC's
};

// The input quantizer layer i shares: its input's first reader's (input_owner), where that is another layer and
// quantized; null where layer i quantizes its input itself. Throws where that quantizer has other bits than
// act_bits: one tensor, one quantizer. Model::set_qat and quant::attach_quantizers attach by it.
std::shared_ptr<layers::Quantizer> shared_input(const std::vector<QuantLayer>& layers, size_t i, int act_bits);

// A network of RepBlocks (one per layer spec but the FC's, in layer_specs order), global average pooling and
// the FC. The families' constructors build and name the modules; everything else is here.
class Model : public layers::Module {
 public:
  const std::vector<std::shared_ptr<layers::RepBlock>>& blocks() const { return blocks_; }
  const layers::Linear& fc() const { return *linear_; }

  // Switches the model to the QAT form `c` describes (see QatConfig). Call it once, on a model in
  // training form, before the optimizer is built: it adds parameters (the steps) and, for `merged`,
  // replaces the branches by their merged convs. A layer that reads a quantized layer's input shares its Q_a
  // (layers::LayerQuantizers::share_input; models::input_owner), at the same activation bits.
  void set_qat(const QatConfig& c);
  const std::optional<QatConfig>& qat() const { return qat_; }
  // The layers quantization acts on, in layer_specs order (the FC last), with their quantizers. The one list
  // that PTQ, calibration, the int8 and QDQ exports, ./inspect and the input means walk.
  std::vector<QuantLayer> quant_layers();
  // Every cluster weight quantizer with its layer's name, in order.
  std::vector<std::pair<std::string, layers::ClusterQuantizer*>> cluster_quantizers();
  // ClusterQAT Algorithm 2 line 2, asked for at each epoch start: every codebook is reset in the next
  // training forward.
  void request_codebook_resets();

  const ArchConfig arch;
  const float oabn_k;
  const std::vector<LayerSpec> specs;

 protected:
  Model(const ArchConfig& arch, float oabn_k);
  // The block of layer spec i, named and kept in blocks(); the caller registers it where the family's names
  // put it.
  std::shared_ptr<layers::RepBlock> make_block(size_t i, engine::Rng& rng);
  // Registers the FC (the last spec) as `name`.
  void make_fc(engine::Rng& rng);
  // The head: global average pooling, then the FC with its quantizers. y [N, C, H, W] -> [N, num_classes]
  Tensor classify(const Tensor& y);

 private:
  std::vector<std::shared_ptr<layers::RepBlock>> blocks_;
  std::shared_ptr<layers::Linear> linear_;
  layers::LayerQuantizers fc_quant_;  // "<fc>_act_quant", "<fc>_weight_quant"
  std::optional<QatConfig> qat_;
};

// The model of `arch`: RepVGG's (models/repvgg.h) or ResNet's (models/resnet.h). oabn_k > 0 turns on OABN
// (layers/oabn.h) on every identity-branch BN (RepVGG blocks only).
std::unique_ptr<Model> make_model(const ArchConfig& arch, engine::Rng& rng, float oabn_k = 0);

}  // namespace models
