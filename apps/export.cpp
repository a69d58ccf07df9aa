// ./export [--ckpt FILE] --onnx OUT.onnx [options]: a checkpoint as ONNX (interop/export.h).
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

#include "interop/export.h"

int main(int argc, char** argv) {
  try {
    return interop::run_export(std::vector<std::string>(argv + 1, argv + argc));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "export: %s\n", e.what());
    return 2;
  }
}
