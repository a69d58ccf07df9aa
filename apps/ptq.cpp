// ./ptq [--ckpt FILE] --bits B[,B...] [options]: post-training quantization of the merged model (quant/ptq.h).
#include "apps/program.h"
#include "quant/ptq.h"

int main(int argc, char** argv) { return run_program("ptq", quant::run_ptq, argc, argv); }
