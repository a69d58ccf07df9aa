// The Makefile: `make` and `make test` build in parallel by default, and an explicit -j wins.
#include <cstdio>
#include <string>

#include "tests/testing.h"

namespace {

// The standard output of a shell command.
std::string output_of(const std::string& command) {
  std::string out;
  FILE* p = popen(command.c_str(), "r");
  REQUIRE(p);
  char buf[4096];
  while (size_t n = std::fread(buf, 1, sizeof buf, p)) out.append(buf, n);
  pclose(p);
  return out;
}

// The MFLAGS line of make's database for `make ARGS`, run as a top-level make (nothing here does the work:
// -q only asks whether build/.found is up to date).
std::string mflags(const std::string& args) {
  std::string db = output_of("env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL make -pq CUDA=0 " + args + " build/.found 2>/dev/null");
  size_t at = db.find("\nMFLAGS = ");
  return at == std::string::npos ? "" : db.substr(at + 1, db.find('\n', at + 1) - at - 1);
}

}  // namespace

TEST_CASE("build: make runs one job per core by default; a -j on the command line wins" *
          skip_unless(have_path("Makefile"), "build test: run from the repository root")) {
  std::string cores = output_of("nproc");
  cores.erase(cores.find_last_not_of("\n") + 1);
  CHECK(mflags("").find(" -j" + cores + " ") != std::string::npos);
  CHECK(mflags("-j1") == "MFLAGS = -pq -j1");
  CHECK(mflags("-j3").find(" -j3 ") != std::string::npos);
}
