#include "interop/export.h"

#include <fmt/format.h>

#include <cstdio>

#include "engine/safetensors.h"
#include "interop/onnx.h"
#include "quant/run_source.h"

namespace interop {

static const char* const kHelp =
    "usage: ./export [--ckpt FILE] --onnx OUT.onnx [options]\n"
    "Writes the deploy form of a RepVGG / QARepVGG checkpoint (training or deploy form) as ONNX, opset 13:\n"
    "input \"input\" [batch, 3, H, W] float32, normalized with the dataset's mean and std; output \"logits\".\n"
    "  --onnx FILE            the ONNX file to write\n"
    "  --qdq                  the quantized model of a QAT checkpoint (./train --qat) in QDQ form: QuantizeLinear /\n"
    "                         DequantizeLinear at its learned steps around each quantized conv's input, int8 weight\n"
    "                         codes (per channel where its steps are), int32 biases; layers it left FP32 stay float\n";

int run_export(const std::vector<std::string>& args) {
  quant::SourceOptions so;
  std::string out;
  bool qdq = false;
  for (size_t i = 0; i < args.size();) {
    if (args[i] == "--help" || args[i] == "-h") {
      std::printf("%s%s", kHelp, quant::kSourceHelp);
      return 0;
    }
    if (quant::parse_source_option(args, i, so)) continue;
    if (args[i] == "--onnx") {
      if (i + 1 >= args.size()) throw std::runtime_error("option --onnx needs a value (the .onnx file to write)");
      out = args[i + 1];
      i += 2;
      continue;
    }
    if (args[i] == "--qdq") {
      qdq = true;
      i++;
      continue;
    }
    throw std::runtime_error(fmt::format("unknown option '{}' (see ./export --help)", args[i]));
  }
  if (out.empty()) throw std::runtime_error("--onnx FILE is required: where to write the model");

  quant::Source s = quant::resolve_source(so);
  std::printf("export: %s\n", quant::describe(s).c_str());
  auto model = quant::load_model(s);
  if (qdq && (!model->qat() || model->qat()->method == "bnest"))
    throw std::runtime_error(fmt::format("--qdq: {} has no quantizers (it is not a quantized QAT checkpoint: no \"qat\" "
                                         "metadata, or qat=bnest); train one with ./train --qat", s.ckpt));
  model->switch_to_deploy();  // no-op for a deploy-form file; the quantizers stay

  OnnxOptions opt;
  opt.image_size = s.image_size;
  opt.norm = s.dataset == "cifar10" ? data::kCifar10Norm : data::kImageNetNorm;
  opt.norm_name = s.dataset == "cifar10" ? "CIFAR-10" : "ImageNet";
  opt.source = s.ckpt;
  opt.qdq = qdq;
  st::write_file_atomic(out, repvgg_to_onnx(*model, opt));
  std::printf("export: wrote %s%s (input [batch, 3, %d, %d], %s normalization, %d classes)\n", out.c_str(), qdq ? " in QDQ form" : "", s.image_size,
              s.image_size, opt.norm_name.c_str(), s.num_classes);
  return 0;
}

}  // namespace interop
