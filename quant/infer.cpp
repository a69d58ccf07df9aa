#include "quant/infer.h"

#include <fmt/format.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <functional>
#include <numeric>

#include "datasets/image_folder.h"
#include "datasets/loader.h"
#include "engine/cuda/cuda_backend.h"
#include "engine/ops.h"
#include "deploy/cluster_file.h"
#include "deploy/integer_model.h"
#include "quant/run_source.h"
#include "trainer/options.h"

namespace quant {

namespace {

const char* const kHelp =
    "usage: ./infer --model FILE [options]\n"
    "Runs a quantized deploy model (./ptq --export) with integer kernels (oneDNN int8 convolutions: u8\n"
    "activations, s8 weights, s32 accumulation) and prints top-1 (top-5 for imagenet), img/s, the model's size\n"
    "and the oneDNN implementation of each layer.\n\n"
    "  --model FILE       the quantized model (required)\n"
    "  --data DIR         dataset folder (default: the one recorded at export; CIFAR-10 is also looked for in\n"
    "                     data/ and ../shared/data)\n"
    "  --limit-val N      N validation images, spread over the set (default all)\n"
    "  --image FILE       classify one image (ImageNet transform) and print the top-5 classes\n"
    "  --synsets FILE     imagenet: the synset list that numbers (and names) the classes\n"
    "  --batch-size N     (default 128)\n"
    "  --threads N        (default: all cores)\n"
    "  --device cpu|cuda  cuda: the quantized blocks on the GPU (engine/cuda/int8.cu), the rest on the host\n"
    "  --help             this text\n";

struct InferOptions {
  std::string model, data, image, synsets, device = "cpu";
  size_t limit_val = 0;
  int batch = 128, threads = 0;
};

InferOptions parse(const std::vector<std::string>& args, bool& help) {
  InferOptions o;
  for (size_t i = 0; i < args.size(); i++) {
    const std::string& a = args[i];
    if (a == "--help") {
      help = true;
      continue;
    }
    if (i + 1 >= args.size()) throw std::runtime_error(fmt::format("option {} needs a value (see ./infer --help)", a));
    const std::string& v = args[++i];
    if (a == "--model") o.model = v;
    else if (a == "--data") o.data = v;
    else if (a == "--image") o.image = v;
    else if (a == "--synsets") o.synsets = v;
    else if (a == "--device" && (v == "cpu" || v == "cuda")) o.device = v;
    else if (a == "--device") throw std::runtime_error(fmt::format("option --device: '{}', expected cpu or cuda", v));
    else if (a == "--limit-val") o.limit_val = (size_t)parse_int(a, v, 1);
    else if (a == "--batch-size") o.batch = parse_int(a, v, 1);
    else if (a == "--threads") o.threads = train::thread_count(a, v);
    else throw std::runtime_error(fmt::format("unknown option '{}' (see ./infer --help)", a));
  }
  if (!help && o.model.empty()) throw std::runtime_error("--model FILE is required (see ./infer --help)");
  return o;
}

std::string md(const Int8Model& m, const std::string& key, const std::string& fallback) {
  auto it = m.metadata.find(key);
  return it == m.metadata.end() ? fallback : it->second;
}

// What ./ptq's open_split needs to find the validation set again.
Source source_of(const InferOptions& o, const Int8Model& m) {
  Source s;
  s.ckpt = o.model;
  s.arch = m.arch.name;
  s.dataset = md(m, "dataset", "cifar10");
  s.data = o.data.empty() ? md(m, "data", "") : o.data;
  s.synsets = o.synsets.empty() ? md(m, "synsets", "") : o.synsets;
  s.image_size = parse_int("image_size", md(m, "image_size", s.dataset == "imagenet" ? "224" : "32"), 1);
  s.resize_size = parse_int("resize_size", md(m, "resize_size", "256"), 1);
  s.num_classes = m.arch.num_classes;
  return s;
}

// The k largest logits of row 0 of `logits` [1, K], best first.
std::vector<int> top_k(const std::vector<float>& logits, int k) {
  std::vector<int> idx(logits.size());
  std::iota(idx.begin(), idx.end(), 0);
  k = std::min<int>(k, (int)idx.size());
  std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), [&](int a, int b) { return logits[a] > logits[b]; });
  idx.resize(k);
  return idx;
}

}  // namespace

std::vector<ClassScore> classify_image(IntegerModel& im, const std::string& path, int image_size, int resize_size,
                                       const std::string& synsets) {
  data::ImageOptions opt;
  opt.image_size = image_size, opt.resize_size = resize_size;
  Tensor x = Tensor::empty({1, 3, image_size, image_size});
  data::Image img;
  data::load_eval_image(path, opt, img, x.f32());
  const std::vector<data::Synset> names = synsets.empty() ? std::vector<data::Synset>{} : data::read_synsets(synsets);
  const std::vector<float> logits = im.forward(x).to_vector();
  std::vector<ClassScore> top;
  for (int c : top_k(logits, 5))
    top.push_back({c, logits[c], c < (int)names.size() ? names[c].id + " " + names[c].name : ""});
  return top;
}

int run_infer(const std::vector<std::string>& args) {
  bool help = false;
  const InferOptions o = parse(args, help);
  if (help) {
    std::fputs(kHelp, stdout);
    return 0;
  }
  if (o.threads > 0) omp_set_num_threads(o.threads);
  std::printf("cpu: %s\n", engine::cpu_summary().c_str());
  const engine::Device device = o.device == "cuda" ? engine::Device::cuda : engine::Device::cpu;
  if (device == engine::Device::cuda) engine::cuda::require();  // before reading anything
  const auto t_load = std::chrono::steady_clock::now();
  const Int8Model m = deploy::load_deploy_model(o.model);
  const double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_load).count();
  const Source s = source_of(o, m);
  const int64_t fp32_bytes = [&] {
    int64_t b = 0;
    for (const Int8Layer& l : m.layers) {
      const std::vector<int64_t> shape = l.weight_shape();
      b += 4 * (std::accumulate(shape.begin(), shape.end(), (int64_t)1, std::multiplies<>()) + l.out);
    }
    return b;
  }();
  const std::string cluster = md(m, "cluster_bits", "");
  std::printf("infer: %s: %s, %s, %s, %s weight scales; %s %s, FC %s; loaded in %.2f s%s\n", o.model.c_str(),
              m.arch.name.c_str(), width_summary(m).c_str(), m.method.c_str(), m.granularity.c_str(),
              m.layers.front().name.c_str(), m.layers.front().quantized ? "int8" : "FP32", m.layers.back().quantized ? "int8" : "FP32", load_s,
              cluster.empty() ? "" : fmt::format(" ({}-bit codebooks put on the s8 grid; the biases of {} layers corrected "
                                                 "for its mean error)", cluster, md(m, "cluster_corrected", "0")).c_str());
  std::printf("model size: %.2f MB on disk, %.2f MB of weights and biases (FP32 deploy model: %.2f MB, %.2fx)\n",
              (double)std::filesystem::file_size(o.model) / 1e6, (double)weight_bytes(m) / 1e6, (double)fp32_bytes / 1e6,
              (double)fp32_bytes / (double)weight_bytes(m));
  IntegerModel im(m, device);
  if (!o.image.empty()) {
    if (s.dataset != "imagenet")
      throw std::runtime_error(fmt::format("{}: --image takes an imagenet model, this one is {}", o.model, s.dataset));
    std::printf("%s:\n", o.image.c_str());
    for (const ClassScore& c : classify_image(im, o.image, s.image_size, s.resize_size, s.synsets))
      std::printf("  %6.2f  %4d  %s\n", c.logit, c.index, c.name.empty() ? "(no --synsets)" : c.name.c_str());
    return 0;
  }
  auto val = open_split(s, false, o.limit_val);
  data::Loader loader(*val, o.batch, /*train=*/false, 0, omp_get_max_threads());
  loader.start_epoch(0);
  Tensor x, y;
  int64_t top1 = 0, top5 = 0, images = 0, timed = 0;
  double seconds = 0;
  const bool five = s.dataset == "imagenet";
  bool described = false;
  while (const data::Batch* b = loader.next()) {
    data::to_tensors(*b, engine::Device::cpu, x, y);
    const auto t0 = std::chrono::steady_clock::now();
    const Tensor logits = im.forward(x);
    if (described) {  // the first batch builds the primitives: not timed
      seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      timed += b->n;
    }
    top1 += engine::topk_correct(logits, y, 1);
    if (five) top5 += engine::topk_correct(logits, y, 5);
    images += b->n;
    if (!described) {
      std::printf("layers (input -> output, oneDNN implementation):\n");
      for (const std::string& line : im.describe()) std::printf("  %s\n", line.c_str());
      if (const int split = im.split_layers())
        std::printf("exact int8 without VNNI: %d of %zu layers run the exact split (two convolutions each: their "
                    "codes would saturate vpmaddubsw's s16 sums; W7/A8 runs one; docs/int8.md)\n",
                    split, m.layers.size());
      described = true;
    }
  }
  if (images == 0) throw std::runtime_error(fmt::format("{}: no validation images", s.data));
  std::printf("integer inference: top-1 %.2f%%", 100.0 * top1 / images);
  if (five) std::printf(", top-5 %.2f%%", 100.0 * top5 / images);
  std::printf(" on %lld validation images\n", (long long)images);
  if (timed > 0)
    std::printf("speed: %.1f img/s (the forward alone, batch %d, %d threads, the first batch not timed)\n",
                timed / seconds, o.batch, omp_get_max_threads());
  return 0;
}

}  // namespace quant
