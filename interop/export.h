// ./export: a checkpoint's deploy form as an ONNX model (interop/onnx.h).
#pragma once
#include <string>
#include <vector>

namespace interop {

// The program: parses args (throws naming the option for a bad one), writes the file, returns 0.
int run_export(const std::vector<std::string>& args);

}  // namespace interop
