// ./infer --model FILE [options]: integer inference of a quantized deploy model (quant/infer.h).
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

#include "quant/infer.h"

int main(int argc, char** argv) {
  try {
    return quant::run_infer(std::vector<std::string>(argv + 1, argv + argc));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "infer: %s\n", e.what());
    return 2;
  }
}
