// ./infer --model FILE [options]: integer inference of a quantized deploy model (quant/infer.h).
#include "apps/program.h"
#include "quant/infer.h"

int main(int argc, char** argv) { return run_program("infer", quant::run_infer, argc, argv); }
