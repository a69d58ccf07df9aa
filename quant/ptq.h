// ./ptq: post-training quantization of the merged (deploy-form) model, as the OABN paper's Sec. 4.1:
// weights symmetric uniform (per layer, or per output channel), activations asymmetric uniform per layer,
// calibrated on training batches without augmentation, stage0 and the FC kept FP32; evaluated with
// simulated (fake) quantization against the FP32 deploy model. See quant/ptq_model.h.
#pragma once
#include <string>
#include <vector>

#include "quant/ptq_model.h"
#include "quant/run_source.h"

namespace quant {

struct PtqOptions {
  SourceOptions source;
  std::vector<int> bits;       // weight bit widths, one quantized model each
  std::vector<int> act_bits;   // empty: as bits; one value: for all; else one per bit width
  Granularity granularity = Granularity::layer;
  CalibMethod calib = CalibMethod::minmax;
  int calib_batches = 16;
  bool quantize_first_last = false;
  bool int32_bias = false;     // simulate the integer kernels' bias: rounded to a multiple of s_x s_w
  std::string export_path;     // --export: the quantized deploy model (quant/int8_model.h), one bit width
  bool help = false;
};

// Parses argv (without the program name); throws naming the bad option.
PtqOptions parse_ptq_options(const std::vector<std::string>& args);
std::string ptq_help();

// The program: parses, runs, prints the table (and writes --json). Returns 0; errors throw
// std::runtime_error (a missing or corrupt checkpoint, one of another arch: the message names the file).
int run_ptq(const std::vector<std::string>& args);

}  // namespace quant
