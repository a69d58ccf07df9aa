// Helpers of the interop tests: running Debian's /usr/bin/python3 (python3-torch, and the pip packages
// scripts/install-deps.sh adds): which modules it has, a script's exit status and output; a temporary
// folder; a model with every BN's state randomized.
#pragma once
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "models/repvgg.h"

// Whether /usr/bin/python3 can import every one of `modules`, each one of numpy, torch, onnx, onnxruntime,
// tensorboard (asked once per run, without importing them).
bool python_has(const std::vector<std::string>& modules);
// "needs /usr/bin/python3 with a, b (...)", for skip_unless.
std::string python_needs(const std::vector<std::string>& modules, const std::string& install_hint);

struct PythonRun {
  int rc = -1;
  std::string output;  // stdout and stderr
};
// /usr/bin/python3 <args...>, the arguments shell-quoted.
PythonRun run_python(const std::vector<std::string>& args);

// A fresh folder under the system's temporary folder, removed with everything in it at the end of scope.
struct TempDir {
  std::filesystem::path path;
  TempDir();
  ~TempDir();
  std::string operator/(const std::string& rel) const { return (path / rel).string(); }
};

// Every BN's state away from its default (gamma ~ 1 + 0.3 N, beta ~ 0.2 N, mean ~ 0.2 N, var ~ U(0.5, 1.5)),
// so that the deploy merge has something to fold.
void randomize_bn(models::Model& model, uint64_t seed);

// max |a - b| / max |b| over the whole tensor.
float max_rel(const engine::Tensor& a, const engine::Tensor& b);
