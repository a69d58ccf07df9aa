// ./inspect [--ckpt FILE] [options]: the merged kernels' outliers, block by block (quant/inspect.h).
#include "apps/program.h"
#include "quant/inspect.h"

int main(int argc, char** argv) { return run_program("inspect", quant::run_inspect, argc, argv); }
