// ./export: a checkpoint's deploy form as an ONNX model (interop/onnx.h), quantized (QDQ) at a QAT run's learned
// quantizers or at ./ptq's calibration of a full-precision one.
#pragma once
#include <string>
#include <vector>

namespace quant {

// The program: parses args (throws naming the option for a bad one), writes the file, returns 0.
int run_export(const std::vector<std::string>& args);

}  // namespace quant
