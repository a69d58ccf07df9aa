// Test runner: doctest's main, plus a SKIPPED line for each test skipped for a missing resource.
#define DOCTEST_CONFIG_IMPLEMENT
#include "tests/testing.h"

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <vector>

static std::vector<std::string>& skipped() {
  static std::vector<std::string> s;
  return s;
}

doctest::skip skip_unless(bool condition, const std::string& what) {
  if (!condition) skipped().push_back(what);
  return doctest::skip(!condition);
}

bool have_path(const std::string& path) { return std::filesystem::exists(path); }

std::string shared_data_dir() {
  if (const char* env = std::getenv("REPQ_DATA")) return env;
  for (const char* p : {"../shared/data", "data"})
    if (have_path(std::string(p) + "/README.md") || have_path(std::string(p) + "/cifar-10-batches-bin")) return p;
  return "";
}

int main(int argc, char** argv) {
  doctest::Context ctx;
  ctx.applyCommandLine(argc, argv);
  int rc = ctx.run();
  for (auto& s : skipped()) std::printf("SKIPPED: %s\n", s.c_str());
  return rc;
}
