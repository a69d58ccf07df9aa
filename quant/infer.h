// ./infer --model FILE [options]: the quantized deploy model (./ptq --export, quant/int8_model.h) run with
// integer kernels (quant/int8_runtime.h) over the validation set, or on one image.
#pragma once
#include <string>
#include <vector>

namespace quant {

// Parses argv (without the program name), runs, prints; returns 0. Errors throw std::runtime_error naming
// the file or the option.
int run_infer(const std::vector<std::string>& args);

}  // namespace quant
