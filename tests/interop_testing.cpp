#include "tests/interop_testing.h"

#include <doctest/doctest.h>
#include <stdlib.h>

#include <algorithm>
#include <cmath>

#include <cstdio>
#include <set>
#include <sstream>
#include <sys/wait.h>

static std::string quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

PythonRun run_python(const std::vector<std::string>& args) {
  std::string cmd = "/usr/bin/python3";
  for (auto& a : args) {
    cmd += ' ';
    cmd += quote(a);
  }
  cmd += " 2>&1";
  PythonRun r;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return r;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) r.output.append(buf, n);
  const int status = pclose(p);
  r.rc = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

static const std::set<std::string>& available() {
  static const std::set<std::string> have = [] {
    const PythonRun r = run_python({"-c", "import importlib.util as u; print(*[m for m in "
                                          "('numpy', 'torch', 'onnx', 'onnxruntime', 'tensorboard') if u.find_spec(m)])"});
    std::set<std::string> s;
    std::istringstream in(r.rc == 0 ? r.output : "");
    for (std::string m; in >> m;) s.insert(m);
    return s;
  }();
  return have;
}

bool python_has(const std::vector<std::string>& modules) {
  for (auto& m : modules)
    if (!available().count(m)) return false;
  return true;
}

std::string python_needs(const std::vector<std::string>& modules, const std::string& install_hint) {
  std::string s = "needs /usr/bin/python3 with";
  for (auto& m : modules) s += " " + m;
  return s + " (" + install_hint + ")";
}

TempDir::TempDir() {
  std::string t = (std::filesystem::temp_directory_path() / "repq_interop_XXXXXX").string();
  REQUIRE(mkdtemp(t.data()));
  path = t;
}

TempDir::~TempDir() { std::filesystem::remove_all(path); }

void randomize_bn(models::Model& model, uint64_t seed) {
  engine::Rng rng(seed);
  for (auto& [name, m] : model.modules())
    if (auto* bn = dynamic_cast<layers::BatchNorm2d*>(m))
      for (int64_t c = 0; c < bn->weight.numel(); c++) {
        bn->weight.f32()[c] = 1 + 0.3f * (float)rng.normal();
        bn->bias.f32()[c] = 0.2f * (float)rng.normal();
        bn->running_mean.f32()[c] = 0.2f * (float)rng.normal();
        bn->running_var.f32()[c] = rng.uniform(0.5f, 1.5f);
      }
}

float max_rel(const engine::Tensor& a, const engine::Tensor& b) {
  const std::vector<float> x = a.to_vector(), y = b.to_vector();
  REQUIRE(x.size() == y.size());
  float diff = 0, ref = 0;
  for (size_t i = 0; i < x.size(); i++) {
    diff = std::max(diff, std::abs(x[i] - y[i]));
    ref = std::max(ref, std::abs(y[i]));
  }
  return diff / ref;
}
