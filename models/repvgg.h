// RepVGG, QARepVGG, ACB and OREPA models (official DingXiaoH/RepVGG RepVGG class, its blocks RepVGG's,
// QARepVGG's, ACNet's ACB or OREPA's) of the archs models/arch.h lists, their QAT set-up, and RepVGG's custom L2.
#pragma once
#include <array>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "engine/random.h"
#include "models/arch.h"
#include "models/layer_bits.h"
#include "layers/acnet_block.h"
#include "layers/orepa_block.h"
#include "layers/repvgg_block.h"

namespace models {

using engine::Tensor;

// Quantization-aware training (./train --qat), as RepVGG::set_qat sets the model up:
//   repq-bn     RepQ-BN: every block in merged mode, BNs folded with batch statistics (RepQ Sec. 4.2)
//   repq-bnest  RepQ-BNEst: merged mode, BN statistics estimated (Sec. 4.3)
//   merged      the "Merged" baseline (RepQ Table 1): the model converted to deploy form first, then QAT
//               of its single convs
//   bnest       full precision in merged mode with estimated BN statistics (no quantizers): one conv per
//               block in training instead of two
//   cluster     ClusterQAT (OABN paper Algorithm 2): merged mode folding the BNs' running statistics, each weight
//               quantizer a per-layer codebook of 2^bits entries (layers/cluster_quantizer.h), bits 1..8
// Each quantized block gets an LSQ weight quantizer (cluster: a ClusterQuantizer) and an LSQ input
// quantizer (layers/quantizer.h); stage0 and the FC stay FP32 unless quantize_first_last.
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
  // Not empty: each quantized layer's own widths (RepVGG::quant_layers() order; weight 0: FP32), in place of
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

// A layer that quantization acts on: a block's 3x3 conv (padding 1, then ReLU) or the FC, with its quantizers.
struct QuantLayer {
  std::string name;               // "stage0", "stage1.0", ..., "linear": the block's state-dict prefix, or the FC's
  bool fc = false;                // the FC: weight [O, I], no ReLU
  int in = 0, out = 0, stride = 1, groups = 1;  // channels (the FC: features), the conv's stride and groups
  layers::LayerQuantizers* quant = nullptr;
  bool identity = false;          // a block with an identity branch (layers::RepBlock::has_identity)
  Tensor weight = {}, bias = {};  // the deploy conv's [O, I/g, 3, 3], [O] (a block in deploy form) or the FC's
};

class RepVGG : public layers::Module {
 public:
  // oabn_k > 0 turns on OABN (layers/oabn.h) on every identity-branch BN (RepVGG blocks only).
  RepVGG(const ArchConfig& arch, engine::Rng& rng, float oabn_k = 0);
  Tensor forward(const Tensor& x) override;  // [N, 3, H, W] -> [N, num_classes]
  const std::vector<std::shared_ptr<layers::RepBlock>>& blocks() const { return blocks_; }
  const layers::Linear& fc() const { return *linear_; }

  // Switches the model to the QAT form `c` describes (see QatConfig). Call it once, on a model in
  // training form, before the optimizer is built: it adds parameters (the steps) and, for `merged`,
  // replaces the branches by their merged convs.
  void set_qat(const QatConfig& c);
  const std::optional<QatConfig>& qat() const { return qat_; }
  // The layers quantization acts on, in order: each block's conv ("stage0", "stage1.0", ...), then the FC
  // ("linear"), with their quantizers. The one list that PTQ, calibration, the int8 and QDQ exports,
  // ./inspect and the input means walk.
  std::vector<QuantLayer> quant_layers();
  // Every cluster weight quantizer with its layer's name, in order.
  std::vector<std::pair<std::string, layers::ClusterQuantizer*>> cluster_quantizers();
  // ClusterQAT Algorithm 2 line 2, asked for at each epoch start: every codebook is reset in the next
  // training forward.
  void request_codebook_resets();

  const ArchConfig arch;
  const float oabn_k;

 private:
  std::vector<std::shared_ptr<layers::RepBlock>> blocks_;  // stage0, stage1.0, ..., in order
  std::shared_ptr<layers::Linear> linear_;
  layers::LayerQuantizers fc_quant_{*this, "linear_"};  // "linear_act_quant", "linear_weight_quant"
  std::optional<QatConfig> qat_;
};

// RepVGG's custom L2 (official get_custom_L2), for one training-form RepVGG block:
//     l2 = Σ K₃² − Σ K₃[:, :, 1, 1]² + Σ eq² / (t₃² + t₁²),   eq = K₃[:, :, 1, 1]·t₃ + K₁·t₁
// with t₃, t₁ = γ/sqrt(σ² + ε) of the 3x3 and 1x1 BNs (running σ², detached). The trainer adds
// wd/2 · Σ_blocks l2 to the loss and turns plain decay off for the parameters it covers.
Tensor custom_l2(const layers::RepVGGBlock& block);
Tensor custom_l2(const RepVGG& model);  // the sum over the blocks; RepVGG blocks only
// Whether a parameter's plain weight decay is replaced by the custom L2 (the branch convs and BNs).
bool covered_by_custom_l2(const std::string& param_name);

}  // namespace models
