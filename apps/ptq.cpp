// ./ptq [--ckpt FILE] --bits B[,B...] [options]: post-training quantization of the merged model (quant/ptq.h).
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

#include "quant/ptq.h"

int main(int argc, char** argv) {
  try {
    return quant::run_ptq(std::vector<std::string>(argv + 1, argv + argc));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ptq: %s\n", e.what());
    return 2;
  }
}
