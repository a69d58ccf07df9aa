// ./inspect [--ckpt FILE] [options]: the merged kernels' outliers, block by block (quant/inspect.h).
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

#include "quant/inspect.h"

int main(int argc, char** argv) {
  try {
    return quant::run_inspect(std::vector<std::string>(argv + 1, argv + argc));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "inspect: %s\n", e.what());
    return 2;
  }
}
