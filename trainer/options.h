// ./train's options: defaults per dataset (the OABN paper's Table 2), parsing with clear errors, --help.
#pragma once
#include <optional>
#include <string>
#include <vector>

#include "datasets/decode.h"
#include "models/repvgg.h"

namespace train {

struct Options {
  std::string dataset;  // cifar10 | imagenet
  std::string arch;     // default: repvgg-cifar (cifar10), repvgg-a0 (imagenet)
  std::string data;     // dataset folder; default: found (and for CIFAR-10 fetched) automatically
  int epochs = 0;       // default: 450 (cifar10); 120 or 160 (imagenet, by --oabn-k)
  int batch_size = 0;   // default: 128 (cifar10), 256 (imagenet)
  float lr = 0.1f;
  float momentum = 0.9f;
  bool nesterov = false;
  float wd = 1e-4f;
  std::string sched;    // cosine | step; default: cosine (cifar10), step (imagenet)
  int tmax = 0;         // cosine period in epochs; default 50 (cifar10), else epochs
  int step_size = 0;    // step decay period; default 30 or 40 (imagenet, by --oabn-k)
  float gamma = 0.1f;   // step decay factor
  int warmup = 0;       // linear warm-up epochs
  float label_smoothing = 0.f;
  float oabn_k = 0.f;   // 0: OABN off
  bool custom_l2 = false;
  uint64_t seed = 0;
  int threads = 0;      // 0: all cores
  std::string device = "cpu";
  float bucket_mb = 25.f;  // distributed: the gradient all-reduce's bucket size
  bool sync_bn = false;    // distributed: BN statistics of the global batch
  float dist_timeout = 1800.f;  // distributed: seconds a collective may wait for the other ranks
  std::string out;      // default: runs/<dataset>-<arch>-<date-time>
  std::string resume;   // a run folder or a checkpoint file
  size_t limit_train = 0, limit_val = 0;  // 0: all
  int eval_every = 1;
  std::string synsets;
  int image_size = 0;   // default: 32 (cifar10), 224 (imagenet)
  int resize_size = 256;
  std::string bad_images = "fail";
  int64_t max_image_pixels = data::kMaxImagePixels;
  // Quantization-aware training (models/repvgg.h QatConfig)
  std::optional<models::QatMethod> qat;  // --qat METHOD (models/repvgg.h), or none
  int bits = 8, act_bits = 0;           // act_bits 0: as bits
  std::string granularity = "layer";    // weight steps: layer | channel
  std::string step_init = "min-error";  // min-error | lsq
  bool quantize_first_last = false;
  std::string layer_bits;  // --layer-bits SPEC: per-layer widths over the above (models/layer_bits.h)
  std::string init;     // start from this full-precision checkpoint (not a resume)
  // Knowledge distillation from a full-precision teacher of the same arch (trainer/step.h Distillation)
  std::string distill;           // --distill TEACHER.safetensors, or none
  float distill_t = 4.f, distill_w = 0.5f;  // temperature T; the soft-target loss's share w
  bool summary = false; // print the model's size and exit
  bool help = false;
};

// Parses argv (without the program name). Throws std::runtime_error naming the bad option and value.
Options parse_options(const std::vector<std::string>& args);
std::string help_text();

// --threads N: positive and at most 4 a core of this machine (a typo of 100000 would start that many
// threads, each loader thread with its batch buffer); throws naming `option` otherwise. ./ptq's, ./infer's too.
int thread_count(const std::string& option, const std::string& value);

}  // namespace train
