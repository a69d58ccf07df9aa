// ./ptq: post-training quantization of the merged (deploy-form) model, as the OABN paper's Sec. 4.1:
// weights symmetric uniform (per layer, or per output channel), activations asymmetric uniform per layer,
// calibrated on training batches without augmentation, stage0 and the FC kept FP32; evaluated with
// simulated (fake) quantization against the FP32 deploy model. See quant/ptq_model.h.
#pragma once
#include <string>
#include <vector>

#include "quant/adaround.h"
#include "quant/ptq_model.h"
#include "quant/run_source.h"

namespace quant {

constexpr int kPtqBatch = 128;  // the default batch size of calibration and evaluation

struct PtqOptions {
  SourceOptions source;
  std::vector<int> bits;       // weight bit widths, one quantized model each
  std::vector<int> act_bits;   // empty: as bits; one value: for all; else one per bit width
  Granularity granularity = Granularity::layer;
  CalibMethod calib = CalibMethod::minmax;
  int calib_batches = 16;
  std::string layer_bits;      // --layer-bits SPEC (quant/layer_spec.h)
  int keep_fp32 = 0;           // --keep-fp32 N: the N most sensitive layers (quant/sensitivity.h) stay FP32
  bool adaround = false;       // --method adaround: weights rounded by AdaRound (quant/adaround.h), not to nearest
  int adaround_iters = 2000, adaround_images = 1024;
  AdaRoundTarget adaround_target = AdaRoundTarget::quantized_input;  // --adaround-target
  bool quantize_first_last = false;
  std::string export_path;     // --export: the quantized deploy model (deploy/int8_model.h), one bit width
  bool sensitivity = false;    // --sensitivity: per layer, the logit KL of quantizing it alone or all but it
  int sensitivity_images = 256;  // --sensitivity-images N: training images the proxy runs on
  bool sensitivity_check = false;  // --sensitivity-check: also each layer alone's validation top-1, and the rank correlation
  std::string plot;            // --plot FILE.png: the sensitivity bar chart
  bool help = false;
  std::string first_quant_option;  // the first quantization option given ("--bits", ...), "" if none
};

// Parses argv (without the program name); throws naming the bad option.
PtqOptions parse_ptq_options(const std::vector<std::string>& args);
std::string ptq_help();
// The quantization options (--bits, --act-bits, --granularity, --calib, --calib-batches,
// --quantize-first-last), which ./export --qdq takes too: as parse_source_option. check_quant_options
// checks them together once all are parsed; kQuantHelp: their --help lines.
bool parse_quant_option(const std::vector<std::string>& args, size_t& i, PtqOptions& o);
void check_quant_options(const PtqOptions& o);
extern const char* const kQuantHelp;

// ./ptq's calibration: o.calib_batches batches of `batch` training images spread evenly over the training
// split (eval transform, no augmentation), observed on the FP32 `deployed` model. Throws naming s.data when
// there are no training images.
Calibration calibrate_source(const Source& s, models::Model& deployed, const PtqOptions& o, int batch);
// The configuration of o.bits[k] for `model`'s layers, --layer-bits applied.
QuantConfig quant_config(const PtqOptions& o, size_t k, models::Model& model);

// The program: parses, runs, prints the table (and writes --json). Returns 0; errors throw
// std::runtime_error (a missing or corrupt checkpoint, one of another arch: the message names the file).
int run_ptq(const std::vector<std::string>& args);

}  // namespace quant
