// Per-layer bit widths: one layer's widths, and the command line's --layer-bits SPEC (./ptq, ./export --qdq,
// ./train --qat), e.g.
//   stage0=fp32,stage1.0=8,stage2.*=4
// comma-separated PATTERN=VALUE, PATTERN a layer name of RepVGG::quant_layers() ("stage0", "stage1.0", ...,
// "linear") where * matches any run of characters and ? one; VALUE fp32 (the layer stays in float), W (its
// weights' width, its input's as the other options say: --act-bits) or W/A (both), each 1..16. Entries apply
// in order, later ones over earlier ones, over the widths the other options give every layer; the ranges of
// a method (2..16, ClusterQAT's 1..8) are checked where the widths are used.
#pragma once
#include <string>
#include <vector>

namespace models {

// One layer's bit widths: its weights' (ClusterQAT: its codebook's) and its input's; weight 0 leaves it FP32.
struct LayerBits {
  int weight = 0, act = 0;
  bool operator==(const LayerBits&) const = default;
};

bool glob_match(const std::string& pattern, const std::string& name);

// `base` (one entry per name) with `spec` applied. Throws naming `option` for an entry without '=', a value
// that is neither fp32 nor 2..16, or a pattern that names no layer (listing the layers).
// default_act: the input width of a layer whose base is FP32, for a VALUE W.
std::vector<LayerBits> apply_layer_spec(const std::string& spec, const std::vector<std::string>& names,
                                        std::vector<LayerBits> base, int default_act, const std::string& option = "--layer-bits");

// The widths of every layer in order as files keep them (metadata "layer_bits" of a QAT checkpoint, a compressed
// ClusterQAT file and an int8 file): "fp32,4/8,4/8,...,fp32", W/A for a quantized layer.
std::string layer_widths(const std::vector<LayerBits>& layers);
// Its inverse; throws "WHERE holds 'ENTRY', expected fp32 or W/A (e.g. 4/8)" for an entry that is neither (widths
// 1..16; the ranges of a use are checked by that use).
std::vector<LayerBits> parse_layer_widths(const std::string& s, const std::string& where);

}  // namespace models
