// ./infer --model FILE [options]: the quantized deploy model (./ptq --export, quant/int8_model.h) run with
// integer kernels (quant/int8_runtime.h) over the validation set, or on one image.
#pragma once
#include <string>
#include <vector>

#include "quant/int8_model.h"
#include "quant/int8_runtime.h"

namespace quant {

// Parses argv (without the program name), runs, prints; returns 0. Errors throw std::runtime_error naming
// the file or the option.
int run_infer(const std::vector<std::string>& args);

// The model ./infer runs: a quantized deploy model (./ptq --export) as load_int8 reads it; a ClusterQAT one
// (./ptq --export of a cluster run, its codes packed on disk, docs/cluster.md) made at load: its QAT deploy
// model is loaded (codes decoded, data and synsets as ./ptq finds them), then export_int8 puts each codebook
// on its layer's s8 grid.
Int8Model load_deploy_model(const std::string& path, const std::string& data, const std::string& synsets);

// --image: the 5 largest logits for the image at `path` (data::load_eval_image, the ImageNet evaluation
// transform at the model's sizes), best first, each named "synset description" from the synsets file's
// line of its index ("" without a file or beyond its lines).
struct ClassScore {
  int index;
  float logit;
  std::string name;
};
std::vector<ClassScore> classify_image(IntegerModel& im, const std::string& path, int image_size, int resize_size,
                                       const std::string& synsets);

}  // namespace quant
