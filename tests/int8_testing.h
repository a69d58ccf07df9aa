// A small quantized model for the integer-inference tests: repvgg-cifar at width 8, random weights with BN
// statistics from one training-mode forward, deployed, calibrated by ./ptq's calibrate and attach_quantizers
// on a made-up CIFAR-10 folder, and a batch of that folder's test images; and the random full-width checkpoint
// the quantization programs' tests run on.
#pragma once
#include <filesystem>
#include <memory>

#include "models/repvgg.h"
#include "quant/ptq_model.h"

struct QuantizedSmall {
  std::shared_ptr<models::Model> model;  // deploy form, quantizers attached
  engine::Tensor images;                  // [32, 3, 32, 32], normalized as the evaluation does
};
// layer_spec: --layer-bits over those widths (quant/layer_spec.h), e.g. "stage2.*=fp32"; arch: another model
// than repvgg-cifar at width 8 (e.g. "resnet18-cifar-w8"), on the same 32x32 images.
QuantizedSmall quantized_small(int bits, quant::Granularity g, bool quantize_first_last, const std::string& layer_spec = "",
                               const std::string& arch = "");
// The same model as a ClusterQAT one (models::QatConfig "cluster"): a few training steps on the made-up
// folder set its codebooks and LSQ steps, then eval and deploy form; small_cifar() is that folder.
QuantizedSmall cluster_small(int bits, int act_bits, bool quantize_first_last);
std::filesystem::path small_cifar();
// A full-width repvgg-cifar of random weights and BN statistics, in train form, saved as ./train writes one
// (arch and dataset metadata): the checkpoint the programs' tests (./ptq --sensitivity, --method adaround) run on.
void save_random_repvgg_cifar(const std::filesystem::path& path);
