#include "quant/export.h"

#include <fmt/format.h>

#include <cstdio>

#include "engine/safetensors.h"
#include "interop/onnx.h"
#include "quant/ptq.h"

namespace quant {

using interop::OnnxOptions;
using interop::to_onnx;

static const char* const kHelp =
    "usage: ./export [--ckpt FILE] --onnx OUT.onnx [--qdq [--bits B ...]] [options]\n"
    "Writes the deploy form of a RepVGG / QARepVGG checkpoint (training or deploy form) as ONNX, opset 13:\n"
    "input \"input\" [batch, 3, H, W] float32, normalized with the dataset's mean and std; output \"logits\".\n"
    "  --onnx FILE            the ONNX file to write\n"
    "  --qdq                  the quantized model in QDQ form: QuantizeLinear / DequantizeLinear around each\n"
    "                         quantized conv's input, int8 weight codes (per channel where its steps are), int32\n"
    "                         biases; layers left FP32 stay float. A QAT checkpoint (./train --qat) at its learned\n"
    "                         steps; a full-precision one quantized as ./ptq does, with the options below (one\n"
    "                         bit width, 2..8), calibrated on its training images (--data)\n";

// The quantization options of ./ptq that name one model: one bit width of at most 8 (QuantizeLinear's codes).
static void check_one_model(const PtqOptions& o) {
  for (const auto& [name, v] : {std::pair{"--bits", &o.bits}, std::pair{"--act-bits", &o.act_bits}}) {
    if (v->size() > 1)
      throw std::runtime_error(fmt::format("option {}: ./export writes one model, give one bit width (got {})", name, v->size()));
    if (!v->empty() && v->front() > 8)
      throw std::runtime_error(fmt::format("option {}: {} bits; opset 13's QuantizeLinear holds 8 at most", name, v->front()));
  }
}

int run_export(const std::vector<std::string>& args) {
  PtqOptions q;  // its source options, and the quantization options for a full-precision checkpoint
  std::string out;
  bool qdq = false;
  for (size_t i = 0; i < args.size();) {
    if (args[i] == "--help" || args[i] == "-h") {
      std::printf("%s%s%s", kHelp, kQuantHelp, kSourceHelp);
      return 0;
    }
    if (parse_source_option(args, i, q.source) || parse_quant_option(args, i, q)) continue;
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
  if (!q.first_quant_option.empty() && !qdq)
    throw std::runtime_error(fmt::format("option {} quantizes the model: it needs --qdq", q.first_quant_option));
  check_quant_options(q);
  check_one_model(q);

  Source s = resolve_source(q.source);
  std::printf("export: %s\n", describe(s).c_str());
  auto model = load_model(s);
  const bool qat = model->qat() && !model->qat()->traits().full_precision;  // bnest trains in full precision
  if (qdq && qat && !q.first_quant_option.empty())
    throw std::runtime_error(fmt::format("option {}: {} is a QAT checkpoint ({}), exported at its learned quantizers; the "
                                         "quantization options are for full-precision checkpoints", q.first_quant_option, s.ckpt,
                                         models::qat_method_name(model->qat()->method)));
  if (qdq && qat && model->qat()->traits().cluster)
    throw std::runtime_error(fmt::format("--qdq: {} is a ClusterQAT checkpoint: its weights are codebook entries, which "
                                         "QDQ's uniform int8 codes of one step cannot hold", s.ckpt));
  if (qdq && !qat && q.bits.empty())
    throw std::runtime_error(fmt::format("--qdq: {} has no quantizers (it is not a quantized QAT checkpoint: no \"qat\" metadata, "
                                         "or qat=bnest): give --bits B to quantize it as ./ptq does, or train one with ./train --qat",
                                         s.ckpt));
  model->switch_to_deploy();  // no-op for a deploy-form file; a QAT checkpoint's quantizers stay
  if (qdq && !qat) {
    const int batch = q.source.batch_size > 0 ? q.source.batch_size : kPtqBatch;
    Calibration cal;
    try {
      cal = calibrate_source(s, *model, q, batch);
    } catch (const std::exception& e) {
      throw std::runtime_error(fmt::format("--bits calibrates on the training images, as ./ptq does (--data DIR): {}", e.what()));
    }
    const QuantConfig c = quant_config(q, 0, *model);
    attach_quantizers(*model, c, cal);
    std::printf("export: W%d/A%d per %s, %s calibration on %zu training images (%d batches), the first layer and the FC %s\n", c.weight_bits,
                c.act_bits, granularity_name(c.granularity), calib_name(c.calib), cal.images, cal.batches,
                c.quantize_first_last ? "quantized" : "FP32");
    if (!q.layer_bits.empty()) std::printf("export: per layer, --layer-bits %s\n", q.layer_bits.c_str());
  }

  OnnxOptions opt;
  opt.image_size = s.image_size;
  opt.norm = s.dataset == "cifar10" ? data::kCifar10Norm : data::kImageNetNorm;
  opt.norm_name = s.dataset == "cifar10" ? "CIFAR-10" : "ImageNet";
  opt.source = s.ckpt;
  opt.qdq = qdq;
  st::write_file_atomic(out, to_onnx(*model, opt));
  std::printf("export: wrote %s%s (input [batch, 3, %d, %d], %s normalization, %d classes)\n", out.c_str(), qdq ? " in QDQ form" : "", s.image_size,
              s.image_size, opt.norm_name.c_str(), s.num_classes);
  return 0;
}

}  // namespace quant
