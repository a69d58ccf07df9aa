#include "datasets/image_folder.h"

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <stdexcept>

#include "datasets/decode.h"
#include "datasets/transforms.h"

namespace fs = std::filesystem;

namespace data {

BadImages parse_bad_images(const std::string& s) {
  if (s == "fail") return BadImages::fail;
  if (s == "skip") return BadImages::skip;
  throw std::invalid_argument("bad_images must be fail or skip, not '" + s + "'");
}

static bool is_image_name(const fs::path& p) {
  std::string ext = p.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return char(std::tolower(c)); });
  return ext == ".jpg" || ext == ".jpeg" || ext == ".png";
}

std::vector<Synset> read_synsets(const std::string& path) {
  if (!fs::is_regular_file(path)) throw std::runtime_error("synsets file " + path + ": missing or not a regular file");
  std::ifstream in(path);
  if (!in) throw std::runtime_error("synsets file " + path + ": cannot open");
  std::vector<Synset> out;
  for (std::string line; std::getline(in, line);) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    const size_t end = line.find_first_of(" \t");
    Synset s{line.substr(0, end), ""};
    if (s.id.empty()) throw std::runtime_error("synsets file " + path + ": line " + std::to_string(out.size() + 1) + " is empty");
    const size_t name = end == std::string::npos ? std::string::npos : line.find_first_not_of(" \t", end);
    if (name != std::string::npos) s.name = line.substr(name);
    out.push_back(std::move(s));
  }
  if (out.empty()) throw std::runtime_error("synsets file " + path + ": empty");
  return out;
}

void decode_checked(const std::string& path, const ImageOptions& opt, Image& img, int& rh, int& rw) {
  decode_image(path, img, opt.max_pixels);
  if (!resize_shorter_dims(img.h, img.w, opt.resize_size, rh, rw))
    throw std::runtime_error(path + ": a " + std::to_string(img.w) + " x " + std::to_string(img.h) +
                             " image is too elongated: its shorter side resized to " + std::to_string(opt.resize_size) +
                             " makes the longer over 2^31 - 1 pixels");
}

void load_eval_image(const std::string& path, const ImageOptions& opt, Image& img, float* chw) {
  int rh = 0, rw = 0;
  decode_checked(path, opt, img, rh, rw);
  resize_crop(img.pixels.data(), img.h, img.w, Box{0, 0, img.h, img.w}, rh, rw, center_crop_box(rh, rw, opt.image_size), false,
              kImageNetNorm, chw);
}

ImageFolder::ImageFolder(const std::string& dir, const ImageOptions& opt, size_t limit) : dir_(dir), opt_(opt) {
  if (opt.image_size <= 0 || opt.resize_size < opt.image_size)
    throw std::runtime_error("ImageFolder: need 0 < image_size <= resize_size, got image_size " +
                             std::to_string(opt.image_size) + ", resize_size " +
                             std::to_string(opt.resize_size));
  if (opt.max_pixels < 1)
    throw std::runtime_error("ImageFolder: max_pixels must be at least 1, got " + std::to_string(opt.max_pixels));
  if (!fs::is_directory(dir))
    throw std::runtime_error("ImageFolder " + dir + ": not a folder (expected " + dir + "/<class>/<image>)");
  std::vector<std::string> classes;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.is_directory()) classes.push_back(e.path().filename().string());
  std::sort(classes.begin(), classes.end());
  if (classes.empty())
    throw std::runtime_error("ImageFolder " + dir + ": no class folders (expected " + dir +
                             "/<class>/<image>)");

  std::map<std::string, int> synset_index;  // synset -> its line number
  num_classes_ = int(classes.size());
  if (!opt.synsets.empty()) {
    const std::vector<Synset> synsets = read_synsets(opt.synsets);
    for (size_t k = 0; k < synsets.size(); k++) synset_index.emplace(synsets[k].id, (int)k);
    num_classes_ = (int)synsets.size();
  }

  for (size_t c = 0; c < classes.size(); c++) {
    int label = int(c);
    if (!opt.synsets.empty()) {
      auto it = synset_index.find(classes[c]);
      if (it == synset_index.end())
        throw std::runtime_error("ImageFolder " + dir + ": folder " + classes[c] + " is not a synset of " +
                                 opt.synsets);
      label = it->second;
    }
    fs::path folder = fs::path(dir) / classes[c];
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(folder))
      if (e.is_regular_file() && is_image_name(e.path())) names.push_back(e.path().filename().string());
    if (names.empty())
      throw std::runtime_error("ImageFolder " + dir + ": class folder " + folder.string() +
                               " has no images (.jpg, .jpeg, .png)");
    std::sort(names.begin(), names.end());
    for (const auto& n : names) {
      files_.push_back((folder / n).string());
      labels_.push_back(label);
    }
  }
  if (limit > 0 && limit < files_.size()) {
    std::vector<size_t> keep = spread_subset(files_.size(), limit);
    for (size_t i = 0; i < keep.size(); i++) {  // keep[i] >= i: compact in place, front to back
      files_[i] = files_[keep[i]];
      labels_[i] = labels_[keep[i]];
    }
    files_.resize(limit);
    labels_.resize(limit);
  }
}

bool ImageFolder::load(size_t i, bool train, uint64_t rng_seed, float* chw) const {
  thread_local Image img;
  int rh = 0, rw = 0;
  try {
    if (!train) {
      load_eval_image(files_[i], opt_, img, chw);
      return true;
    }
    decode_checked(files_[i], opt_, img, rh, rw);  // the same images are bad in training as in eval
  } catch (const std::runtime_error& e) {
    if (opt_.bad_images == BadImages::fail) throw;
    std::lock_guard<std::mutex> lock(bad_mutex_);
    if (bad_.insert(i).second) std::fprintf(stderr, "warning: skipping bad image %s\n", e.what());
    return false;
  }
  const int s = opt_.image_size;
  Rng rng(rng_seed);
  Box box = random_resized_crop_box(img.h, img.w, rng);
  bool flip = rng.uniform() < 0.5;
  resize_crop(img.pixels.data(), img.h, img.w, box, s, s, Box{0, 0, s, s}, flip, kImageNetNorm, chw);
  return true;
}

size_t ImageFolder::bad_count() const {
  std::lock_guard<std::mutex> lock(bad_mutex_);
  return bad_.size();
}

std::unique_ptr<ImageFolder> open_image_folder(const std::string& dir, const ImageOptions& opt,
                                               size_t limit) {
  return std::make_unique<ImageFolder>(dir, opt, limit);
}

}  // namespace data
