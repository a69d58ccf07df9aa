// ./export [--ckpt FILE] --onnx OUT.onnx [options]: a checkpoint as ONNX (quant/export.h).
#include "apps/program.h"
#include "quant/export.h"

int main(int argc, char** argv) { return run_program("export", quant::run_export, argc, argv); }
