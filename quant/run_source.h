// What ./ptq and ./inspect start from: a checkpoint, the model it holds and the data it was trained on.
//
// The checkpoint is --ckpt FILE, else runs/latest/best.safetensors (the last ./train run). The arch, dataset,
// data folder, OABN k and image sizes come from, in order: the command line; the config.json that ./train
// wrote beside the checkpoint; the checkpoint's __metadata__ ("arch", "dataset", "oabn_k"); the defaults.
// The number of classes is read off the file's linear.weight.
#pragma once
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "datasets/dataset.h"
#include "engine/safetensors.h"
#include "models/repvgg.h"

namespace quant {

// The options both programs take.
struct SourceOptions {
  std::string ckpt, data, dataset, arch, synsets;
  std::string device = "cpu";
  std::string json;        // write the results there too
  int threads = 0;         // 0: all cores
  int batch_size = 0;      // 0: the program's default
  int image_size = 0, resize_size = 0;  // imagenet; 0: from config.json, else 224 and 256
  std::optional<float> oabn_k;
  size_t limit_val = 0;    // 0: all
};
// If args[i] is one of the options above, stores it (and its value, args[i + 1]) and moves i past it.
// Throws naming the option for a missing or bad value.
bool parse_source_option(const std::vector<std::string>& args, size_t& i, SourceOptions& o);
extern const char* const kSourceHelp;  // their --help lines

// Parsing helpers shared by the programs' own options.
int parse_int(const std::string& option, const std::string& value, int min);
std::vector<int> parse_int_list(const std::string& option, const std::string& value, int min);  // "8,6,4"

struct Source {
  std::string ckpt;         // the checkpoint file
  std::string config;       // the config.json used ("" if none)
  std::string arch, dataset, data;  // data: the folder given or recorded ("" lets CIFAR-10 be looked for)
  std::string synsets;
  float oabn_k = 0;
  int num_classes = 0;
  int image_size = 32, resize_size = 256;
  engine::Device device = engine::Device::cpu;
  st::File file;            // the checkpoint's contents
  bool deploy_form() const;  // the file holds rbr_reparam tensors
};

// Reads the checkpoint and the config.json beside it. Throws naming the file for a missing or corrupt
// checkpoint, an unreadable config.json, or when the arch or dataset cannot be found anywhere.
Source resolve_source(const SourceOptions& o);
std::string describe(const Source& s);  // "checkpoint X (arch, dataset; settings from Y)"

// The model of the checkpoint, loaded (and in deploy form if the file is), on s.device, in eval mode; a
// QAT checkpoint's model set up as its run trained it (RepVGG::set_qat), learned steps included.
// Throws naming the file when a tensor is missing, extra or of another shape (e.g. another arch's file).
std::unique_ptr<models::Model> load_model(const Source& s);

// The evaluation (train = false) or training split; limit > 0 keeps that many images, spread evenly.
std::unique_ptr<data::Dataset> open_split(const Source& s, bool train, size_t limit);


// JSON text written atomically, the error naming the file.
void write_json(const std::string& path, const std::string& text);

}  // namespace quant
