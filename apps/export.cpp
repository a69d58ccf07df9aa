// ./export [--ckpt FILE] --onnx OUT.onnx [options]: a checkpoint as ONNX (interop/export.h).
#include "apps/program.h"
#include "interop/export.h"

int main(int argc, char** argv) { return run_program("export", interop::run_export, argc, argv); }
