// Per-layer bit widths on the command line (./ptq, ./export --qdq): --layer-bits SPEC, e.g.
//   stage0=fp32,stage1.0=8,stage2.*=4
// comma-separated PATTERN=VALUE, PATTERN a layer name of RepVGG::quant_layers() ("stage0", "stage1.0", ...,
// "linear") where * matches any run of characters and ? one; VALUE fp32 (the layer stays in float) or a bit
// width 2..16 for its weights and its input. Entries apply in order, later ones over earlier ones, over the
// widths the other options give every layer.
#pragma once
#include <string>
#include <vector>

#include "quant/ptq_model.h"

namespace quant {

bool glob_match(const std::string& pattern, const std::string& name);

// `base` (one entry per name) with `spec` applied. Throws naming `option` for an entry without '=', a value
// that is neither fp32 nor 2..16, or a pattern that names no layer (listing the layers).
std::vector<LayerBits> apply_layer_spec(const std::string& spec, const std::vector<std::string>& names,
                                        std::vector<LayerBits> base, const std::string& option = "--layer-bits");

}  // namespace quant
