#include "quant/run_source.h"

#include <fmt/format.h>
#include <omp.h>

#include <charconv>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "datasets/cifar10.h"
#include "datasets/image_folder.h"
#include "engine/cuda/cuda_backend.h"
#include "layers/checkpoint.h"
#include "deploy/cluster_file.h"
#include "trainer/options.h"

namespace quant {

namespace fs = std::filesystem;
using engine::Device;
using engine::Tensor;

const char* const kSourceHelp =
    "  --ckpt FILE            checkpoint (default runs/latest/best.safetensors); settings from the config.json beside it\n"
    "  --arch NAME            arch, when no config.json or metadata says (repvgg-cifar, repvgg-a0, qarepvgg-*, acb-*, orepa-*, [acb-|orepa-]resnet18[-cifar][-wN], ...)\n"
    "  --dataset NAME         cifar10 | imagenet, when no config.json or metadata says\n"
    "  --data DIR             dataset folder (default: the run's; CIFAR-10 is also looked for in data/ and ../shared/data)\n"
    "  --oabn-k K             the OABN k the model was trained with (default: the run's, else 0)\n"
    "  --synsets FILE         imagenet: the synset list that numbers the classes\n"
    "  --image-size N         imagenet: crop size (default: the run's, else 224)\n"
    "  --resize-size N        imagenet: eval resize of the shorter side (default: the run's, else 256)\n"
    "  --limit-val N          evaluate on N validation images, spread over the set (default all)\n"
    "  --batch-size N         batch size (default: ptq 128, inspect 32)\n"
    "  --threads N            threads (default: all cores)\n"
    "  --device cpu|cuda      device (default cpu)\n"
    "  --json FILE            also write the results as JSON\n";

int parse_int(const std::string& option, const std::string& value, int min) {
  int v = 0;
  auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), v);
  if (ec != std::errc() || end != value.data() + value.size())
    throw std::runtime_error(fmt::format("option {}: '{}' is not a valid integer", option, value));
  if (v < min) throw std::runtime_error(fmt::format("option {}: must be at least {}, got {}", option, min, value));
  return v;
}

std::vector<int> parse_int_list(const std::string& option, const std::string& value, int min) {
  std::vector<int> out;
  size_t start = 0;
  while (true) {
    const size_t comma = value.find(',', start);
    out.push_back(parse_int(option, value.substr(start, comma - start), min));
    if (comma == std::string::npos) return out;
    start = comma + 1;
  }
}

bool parse_source_option(const std::vector<std::string>& args, size_t& i, SourceOptions& o) {
  static const char* const names[] = {"--ckpt", "--data", "--dataset", "--arch", "--synsets", "--device", "--json",
                                      "--threads", "--batch-size", "--image-size", "--resize-size", "--oabn-k", "--limit-val"};
  const std::string& name = args[i];
  bool known = false;
  for (const char* n : names) known |= name == n;
  if (!known) return false;
  if (i + 1 >= args.size()) throw std::runtime_error(fmt::format("option {} needs a value", name));
  const std::string& v = args[++i];
  if (name == "--ckpt") o.ckpt = v;
  else if (name == "--data") o.data = v;
  else if (name == "--dataset") {
    if (v != "cifar10" && v != "imagenet") throw std::runtime_error(fmt::format("option --dataset: '{}' is not one of cifar10, imagenet", v));
    o.dataset = v;
  } else if (name == "--arch") o.arch = v;
  else if (name == "--synsets") o.synsets = v;
  else if (name == "--device") {
    if (v != "cpu" && v != "cuda") throw std::runtime_error(fmt::format("option --device: '{}' is not one of cpu, cuda", v));
    o.device = v;
  } else if (name == "--json") o.json = v;
  else if (name == "--threads") o.threads = train::thread_count(name, v);
  else if (name == "--batch-size") o.batch_size = parse_int(name, v, 1);
  else if (name == "--image-size") o.image_size = parse_int(name, v, 1);
  else if (name == "--resize-size") o.resize_size = parse_int(name, v, 1);
  else if (name == "--limit-val") o.limit_val = (size_t)parse_int(name, v, 1);
  else if (name == "--oabn-k") {
    float k = 0;
    auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), k);
    if (ec != std::errc() || end != v.data() + v.size() || k < 0)
      throw std::runtime_error(fmt::format("option --oabn-k: '{}' is not a number >= 0", v));
    o.oabn_k = k;
  }
  i++;
  return true;
}

bool Source::deploy_form() const { return layers::deploy_form(file); }

static nlohmann::json read_config(const fs::path& path) {
  if (!fs::is_regular_file(path)) throw std::runtime_error(fmt::format("{}: not a regular file", path.string()));
  std::ifstream in(path);
  if (!in) throw std::runtime_error(fmt::format("cannot read {}", path.string()));
  try {
    return nlohmann::json::parse(in);
  } catch (const std::exception& e) {
    throw std::runtime_error(fmt::format("{}: not valid JSON ({})", path.string(), e.what()));
  }
}

// The first non-empty of: the option, config["options"][key], the metadata's key.
static std::string pick(const std::string& given, const nlohmann::json& cfg, const char* key, const layers::Metadata& md) {
  if (!given.empty()) return given;
  const nlohmann::json opts = cfg.is_object() ? cfg.value("options", nlohmann::json::object()) : nlohmann::json::object();
  if (opts.contains(key) && opts[key].is_string() && !opts[key].get<std::string>().empty()) return opts[key].get<std::string>();
  auto it = md.find(key);
  return it != md.end() ? it->second : "";
}

Source resolve_source(const SourceOptions& o) {
  Source s;
  s.device = o.device == "cuda" ? Device::cuda : Device::cpu;
  if (s.device == Device::cuda) engine::cuda::require();  // fail at once, before reading anything
  if (o.threads > 0) omp_set_num_threads(o.threads);

  if (o.ckpt.empty()) {
    s.ckpt = (fs::path("runs") / "latest" / "best.safetensors").string();
    if (!fs::exists(s.ckpt))
      throw std::runtime_error(fmt::format("no --ckpt given and {} does not exist: train a model with ./train first", s.ckpt));
  } else {
    s.ckpt = o.ckpt;
    if (!fs::exists(s.ckpt)) throw std::runtime_error(fmt::format("checkpoint {} does not exist", s.ckpt));
  }
  s.file = st::load(s.ckpt);  // throws "file <path>: ..." for a corrupt file
  if (deploy::is_compressed(s.file)) s.file = deploy::decompress_cluster(s.file, s.ckpt);  // ./ptq --export of a ClusterQAT run

  nlohmann::json cfg;
  const fs::path cfg_path = fs::path(s.ckpt).parent_path() / "config.json";
  if (fs::exists(cfg_path)) {
    cfg = read_config(cfg_path);
    s.config = cfg_path.string();
  }
  const nlohmann::json opts = cfg.is_object() ? cfg.value("options", nlohmann::json::object()) : nlohmann::json::object();
  const layers::Metadata& md = s.file.metadata;

  s.arch = pick(o.arch, cfg, "arch", md);
  s.dataset = pick(o.dataset, cfg, "dataset", md);
  if (s.arch.empty() || s.dataset.empty())
    throw std::runtime_error(fmt::format("{}: no config.json beside it and no \"{}\" in its metadata: pass --arch, --dataset and --data",
                                         s.ckpt, s.arch.empty() ? "arch" : "dataset"));
  if (s.dataset != "cifar10" && s.dataset != "imagenet")
    throw std::runtime_error(fmt::format("{}: dataset '{}' is not one of cifar10, imagenet", s.ckpt, s.dataset));
  const models::ArchConfig arch = models::arch_config(s.arch);  // throws for an unknown arch

  // The data folder: --data, else the folder the run used (data_dir), else what it was given.
  s.data = o.data;
  if (s.data.empty() && cfg.is_object() && cfg.contains("data_dir") && cfg["data_dir"].is_string()) s.data = cfg["data_dir"];
  if (s.data.empty()) s.data = pick("", cfg, "data", md);
  s.synsets = pick(o.synsets, cfg, "synsets", md);

  if (o.oabn_k) s.oabn_k = *o.oabn_k;
  else if (opts.contains("oabn_k") && opts["oabn_k"].is_number()) s.oabn_k = opts["oabn_k"].get<float>();
  else if (md.count("oabn_k")) s.oabn_k = float(st::metadata_double(md, s.ckpt, "oabn_k", 0, HUGE_VAL));

  auto number = [&](int given, const char* key, int fallback) {
    if (given > 0) return given;
    if (opts.contains(key) && opts[key].is_number_integer() && opts[key].get<int>() > 0) return opts[key].get<int>();
    return fallback;
  };
  s.image_size = s.dataset == "cifar10" ? 32 : number(o.image_size, "image_size", 224);
  s.resize_size = number(o.resize_size, "resize_size", 256);

  auto fc = s.file.tensors.find("linear.weight");
  if (fc != s.file.tensors.end() && fc->second.shape.size() == 2) s.num_classes = (int)fc->second.shape[0];
  else if (md.count("num_classes")) s.num_classes = int(st::metadata_int(md, s.ckpt, "num_classes", 1, INT32_MAX));
  else s.num_classes = arch.num_classes;
  if (s.num_classes < 1) throw std::runtime_error(fmt::format("file {}: tensor 'linear.weight' has 0 rows, expected one a class", s.ckpt));
  return s;
}

std::string describe(const Source& s) {
  return fmt::format("checkpoint {} ({} form; {}, {}, {} classes{}; settings from {})", s.ckpt, s.deploy_form() ? "deploy" : "train",
                     s.arch, s.dataset, s.num_classes, s.oabn_k > 0 ? fmt::format(", OABN k {}", s.oabn_k) : "",
                     s.config.empty() ? "the command line and the checkpoint's metadata" : s.config);
}

std::unique_ptr<models::Model> load_model(const Source& s) {
  models::ArchConfig arch = models::arch_config(s.arch);
  arch.num_classes = s.num_classes;
  engine::Rng rng(0);
  const float k = arch.block == models::BlockType::repvgg ? s.oabn_k : 0.0f;
  auto model = models::make_model(arch, rng, k);
  if (auto qat = models::qat_from_metadata(s.file.metadata, s.ckpt)) model->set_qat(*qat);  // its quantizers
  if (s.deploy_form()) model->switch_to_deploy();
  layers::load_state_dict(*model, s.file, "", s.ckpt);  // throws "file <ckpt>: tensor ..." on a mismatch
  model->to(s.device);
  model->eval();
  return model;
}

static std::unique_ptr<data::Dataset> open_dataset(const Source& s, bool train, size_t limit) {
  if (s.dataset == "cifar10") return data::open_cifar10(data::find_or_fetch_cifar10(s.data, /*fetch=*/false), train, limit);
  if (s.data.empty())
    throw std::runtime_error(fmt::format("{}: imagenet needs --data DIR, a folder with train/ and val/ ImageFolder trees", s.ckpt));
  data::ImageOptions io;
  io.image_size = s.image_size;
  io.resize_size = s.resize_size;
  io.synsets = s.synsets;
  return data::open_image_folder((fs::path(s.data) / (train ? "train" : "val")).string(), io, limit);
}

std::unique_ptr<data::Dataset> open_split(const Source& s, bool train, size_t limit) {
  auto ds = open_dataset(s, train, limit);
  // A label the model has no logit for would stop the evaluation deep inside the loss: say it here.
  if (s.num_classes > 0 && ds->num_classes() > s.num_classes)
    throw std::runtime_error(fmt::format("{}: the model has {} classes, the {} data {} (labels up to {}): a checkpoint "
                                         "of another dataset?", s.ckpt, s.num_classes, s.dataset, ds->num_classes(),
                                         ds->num_classes() - 1));
  return ds;
}

void write_json(const std::string& path, const std::string& text) { st::write_file_atomic(path, text); }

}  // namespace quant
