// The fuzz targets' bodies, plain functions that libFuzzer (fuzz/*_fuzz.cpp, `make fuzz`) and the suite
// (tests/test_fuzz.cpp, replaying fuzz/corpus/ and fuzz/regressions/) both call.
//
// Each writes its input where a user's file would be and reads it through the engine's real entry point.
// It returns "" when the input is read, or refused with a std::runtime_error whose message names the file
// and is of bounded length; else a description of the problem (another exception, a message without the
// file, a round trip that changes the data). A crash, a hang or a sanitizer report is a problem too.
#pragma once
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "datasets/cifar10.h"
#include "datasets/image_folder.h"
#include "engine/random.h"
#include "engine/safetensors.h"
#include "layers/checkpoint.h"
#include "models/repvgg.h"
#include "deploy/int8_model.h"

namespace fuzz {

// <tmp>/repq-fuzz-<pid>/<rel>, its folder made: one per process, as libFuzzer's -jobs run several.
inline std::string scratch(const std::string& rel) {
  namespace fs = std::filesystem;
  fs::path p = fs::temp_directory_path() / ("repq-fuzz-" + std::to_string(::getpid())) / rel;
  fs::create_directories(p.parent_path());
  return p.string();
}

inline void write(const std::string& path, const uint8_t* data, size_t size) {
  std::ofstream(path, std::ios::binary | std::ios::trunc).write(reinterpret_cast<const char*>(data), std::streamsize(size));
}

// What a refusal's message must be: it names the file and does not echo the input unbounded.
inline std::string check_message(const std::string& what, const std::string& path) {
  if (what.find(path) == std::string::npos) return "message does not name the file " + path + ": " + what.substr(0, 300);
  if (what.size() > 1000 + path.size()) return "message of " + std::to_string(what.size()) + " characters: " + what.substr(0, 300);
  return "";
}

// Runs read(); "" when it returns, or throws a std::runtime_error check_message accepts.
template <class F> std::string refused_clearly(const std::string& path, F read) {
  try {
    read();
    return "";
  } catch (const std::runtime_error& e) {
    return check_message(e.what(), path);
  } catch (const std::exception& e) {
    return std::string("not a std::runtime_error: ") + e.what();
  }
}

// engine/safetensors.h: st::load, and a loaded file saved and loaded again is the same file.
inline std::string safetensors(const uint8_t* data, size_t size) {
  const std::string path = scratch("in.safetensors"), again = scratch("again.safetensors");
  write(path, data, size);
  st::File f;
  bool loaded = false;
  std::string problem = refused_clearly(path, [&] {
    f = st::load(path);
    loaded = true;
  });
  if (!problem.empty() || !loaded) return problem;
  st::save(again, f);
  st::File g = st::load(again);
  if (g.metadata != f.metadata) return "metadata changed by a save and load";
  if (g.tensors.size() != f.tensors.size()) return "tensor count changed by a save and load";
  for (auto& [name, e] : f.tensors) {
    auto it = g.tensors.find(name);
    if (it == g.tensors.end() || it->second.dtype != e.dtype || it->second.shape != e.shape || it->second.bytes != e.bytes)
      return "tensor '" + name + "' changed by a save and load";
  }
  return "";
}

// The model the checkpoint target loads into: RepVGG blocks, one per stage, 2 to 4 channels, 3 classes.
inline models::ArchConfig tiny_arch() {
  models::ArchConfig a = models::cifar_config(models::BlockType::repvgg, 2);
  a.num_blocks = {1, 1, 1, 1};
  a.width_multiplier = {2 / 64.0, 2 / 128.0, 4 / 256.0, 4 / 512.0};
  a.num_classes = 3;
  return a;
}

// layers/checkpoint.h into tiny_arch(), as quant::load_model does: its QAT metadata sets the model up, then
// load_checkpoint switches it to deploy form for a deploy-form file and checks and copies every tensor.
inline std::string checkpoint(const uint8_t* data, size_t size) {
  const std::string path = scratch("run/last.safetensors");
  write(path, data, size);
  return refused_clearly(path, [&] {
    st::File file = st::load(path);
    engine::Rng rng(0);
    models::RepVGG model(tiny_arch(), rng, 0.5f);
    if (auto qat = models::qat_from_metadata(file.metadata, path)) model.set_qat(*qat);
    layers::load_checkpoint(path, model);
  });
}

// deploy/int8_model.h: load_int8, as ./infer reads a quantized deploy model, and a loaded model saved and
// loaded again is the same model.
inline std::string int8(const uint8_t* data, size_t size) {
  const std::string path = scratch("in.int8.safetensors"), again = scratch("again.int8.safetensors");
  write(path, data, size);
  deploy::Int8Model m;
  bool loaded = false;
  std::string problem = refused_clearly(path, [&] {
    m = deploy::load_int8(path);
    loaded = true;
  });
  if (!problem.empty() || !loaded) return problem;
  deploy::Int8Model g;
  try {
    deploy::save_int8(again, m);
    g = deploy::load_int8(again);
  } catch (const std::exception& e) {
    return std::string("a loaded model does not save and load again: ") + e.what();
  }
  if (g.arch.width_multiplier != m.arch.width_multiplier || g.arch.num_classes != m.arch.num_classes ||
      g.granularity != m.granularity || g.layers.size() != m.layers.size())
    return "the model's settings changed by a save and load";
  for (size_t i = 0; i < m.layers.size(); i++) {
    const deploy::Int8Layer &a = m.layers[i], &b = g.layers[i];
    if (a.quantized != b.quantized || a.widths != b.widths || a.weight != b.weight || a.bias != b.bias || a.weight_codes != b.weight_codes ||
        a.weight_scale != b.weight_scale || a.bias_codes != b.bias_codes || a.input_scale != b.input_scale ||
        a.input_zero_point != b.input_zero_point)
      return "layer " + a.name + " changed by a save and load";
  }
  return "";
}

// datasets/cifar10.h: the input as test_batch.bin, every record loaded for training and for evaluation.
inline std::string cifar(const uint8_t* data, size_t size) {
  const std::string path = scratch("cifar/test_batch.bin");
  write(path, data, size);
  return refused_clearly(path, [&] {
    auto ds = data::open_cifar10(std::filesystem::path(path).parent_path().string(), /*train=*/false);
    std::vector<float> chw(3 * 32 * 32);
    for (size_t i = 0; i < ds->size() && i < 64; i++) {
      ds->load(i, true, i, chw.data());
      ds->load(i, false, i, chw.data());
    }
  });
}

// datasets/decode.h and transforms.h through ImageFolder::load (decode, resize, crop, normalize), for
// training and for evaluation, at a 1-megapixel limit; under skip too, where it must return false, not throw.
inline std::string image(const uint8_t* data, size_t size) {
  const std::string path = scratch("images/class/in.png");  // decoding goes by content, not by name
  write(path, data, size);
  const std::string dir = std::filesystem::path(path).parent_path().parent_path().string();
  data::ImageOptions o;
  o.image_size = 12;
  o.resize_size = 14;
  o.max_pixels = 1 << 20;
  std::vector<float> chw(3 * 12 * 12);
  std::string problem = refused_clearly(path, [&] {
    data::ImageFolder ds(dir, o);
    ds.load(0, true, 1, chw.data());
    ds.load(0, false, 1, chw.data());
  });
  if (!problem.empty()) return problem;
  o.bad_images = data::BadImages::skip;
  try {
    data::ImageFolder ds(dir, o);
    ds.load(0, true, 1, chw.data());
    ds.load(0, false, 1, chw.data());
  } catch (const std::exception& e) {
    return std::string("threw under --bad-images skip: ") + e.what();
  }
  return "";
}

}  // namespace fuzz
