// From the training side to the deploy floor: a RepVGG in deploy form with its quantizers (./ptq's calibrated
// ones, or a QAT run's learned ones) written as the files deploy/ reads, ./ptq --export's two formats.
#pragma once
#include <map>
#include <string>
#include <vector>

#include "deploy/int8_model.h"
#include "engine/safetensors.h"
#include "models/repvgg.h"

namespace quant {

using deploy::Int8Model;

// The codes and scales of every quantized layer, the others as FP32; a ClusterQAT layer's weights on s8
// grids (deploy::set_cluster_codes; bits 8 then). `metadata` is added to the file's (dataset, source
// checkpoint, ...). Throws when a quantizer has more than 8 bits or when the blocks are not in deploy form.
//
// `input_means` (quant::input_means, keyed "stage1.0", ..., "linear") corrects the bias of each ClusterQAT
// layer it names for the mean error of the s8 rounding (deploy::cluster_bias_correction).
using InputMeans = std::map<std::string, std::vector<float>>;
Int8Model export_int8(models::Model& model, const std::string& method, const std::string& granularity,
                      const std::map<std::string, std::string>& metadata, const InputMeans& input_means = {});

// A ClusterQAT model as a compressed file (deploy/cluster_file.h), `metadata` added to its own. `input_means`
// go in as "<layer>.input_mean" for the coded layers: the E[x] of the integer model's bias correction,
// measured at export.
st::File compress_cluster(models::Model& deployed, const std::map<std::string, std::string>& metadata,
                          const InputMeans& input_means = {});

}  // namespace quant
