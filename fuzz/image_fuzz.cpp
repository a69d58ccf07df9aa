// libFuzzer entry of the image target (fuzz/targets.h); `make fuzz` builds and runs it.
#include <cstdio>
#include <cstdlib>

#include "fuzz/targets.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string problem = fuzz::image(data, size);
  if (!problem.empty()) {
    std::fprintf(stderr, "image: %s\n", problem.c_str());
    std::abort();
  }
  return 0;
}
