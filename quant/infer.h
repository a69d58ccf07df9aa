// ./infer --model FILE [options]: the quantized deploy model (./ptq --export: deploy/int8_model.h, or a compressed
// ClusterQAT file, deploy/cluster_file.h) run with integer kernels (deploy/integer_model.h) over the validation
// set, or on one image.
#pragma once
#include <string>
#include <vector>

#include "deploy/int8_model.h"
#include "deploy/integer_model.h"

namespace quant {

using deploy::Int8Layer;
using deploy::Int8Model;
using deploy::IntegerModel;
using engine::Tensor;

// Parses argv (without the program name), runs, prints; returns 0. Errors throw std::runtime_error naming
// the file or the option.
int run_infer(const std::vector<std::string>& args);

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
