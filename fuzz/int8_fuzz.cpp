// libFuzzer entry of the int8 export loader target (fuzz/targets.h); `make fuzz` builds and runs it.
#include <cstdio>
#include <cstdlib>

#include "fuzz/targets.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string problem = fuzz::int8(data, size);
  if (!problem.empty()) {
    std::fprintf(stderr, "int8: %s\n", problem.c_str());
    std::abort();
  }
  return 0;
}
