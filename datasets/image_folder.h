// ImageNet-style ImageFolder: dir/<class>/<image> with JPEG or PNG images (.jpg .jpeg .png in any case).
// Train: RandomResizedCrop to image_size (antialiased bilinear), random horizontal flip, ImageNet
// normalization. Eval: shorter side resized to resize_size (antialiased bilinear), center crop image_size.
#pragma once
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "datasets/dataset.h"
#include "datasets/decode.h"

namespace data {

enum class BadImages { fail, skip };
BadImages parse_bad_images(const std::string& s);  // "fail" or "skip"; throws std::invalid_argument

struct ImageOptions {
  int image_size = 224;   // side of the square images load() writes
  int resize_size = 256;  // eval: the shorter side before the center crop
  // "": classes numbered by sorted folder name. Else a synsets file, one `synset description` a line
  // (LOC_synset_mapping.txt): a folder's class is its synset's line number (0-based), the ILSVRC index.
  std::string synsets;
  // fail: load() throws naming the bad file. skip: it warns once per file and returns false.
  BadImages bad_images = BadImages::fail;
  // Images of more pixels (width x height, read from the header before decoding) are bad images.
  int64_t max_pixels = kMaxImagePixels;
};

// A synsets file, one `synset description` a line (LOC_synset_mapping.txt): a class index is its line
// number (0-based). Throws naming the file for a missing or empty file or an empty line.
struct Synset {
  std::string id, name;  // "n01440764", "tench, Tinca tinca"
};
std::vector<Synset> read_synsets(const std::string& path);

// The image at `path` decoded (at most opt.max_pixels) and the size rh x rw of its shorter side resized to
// opt.resize_size; throws naming the file for a bad image.
void decode_checked(const std::string& path, const ImageOptions& opt, Image& img, int& rh, int& rw);
// The evaluation transform of the image at `path`: decode_checked, resize to rh x rw (antialiased bilinear),
// center crop opt.image_size, ImageNet normalization, into chw [3, image_size, image_size]. What
// ImageFolder::load writes in eval and ./infer --image classifies.
void load_eval_image(const std::string& path, const ImageOptions& opt, Image& img, float* chw);

class ImageFolder : public Dataset {
 public:
  // Lists dir (a .../train or .../val folder), classes and files in sorted order; limit > 0 keeps limit
  // images spread evenly (spread_subset in dataset.h). Throws std::runtime_error for a missing folder, no class folders, an empty class folder,
  // a folder missing from the synsets file or max_pixels < 1.
  ImageFolder(const std::string& dir, const ImageOptions& opt, size_t limit = 0);

  size_t size() const override { return files_.size(); }
  int num_classes() const override { return num_classes_; }
  int label(size_t i) const override { return labels_[i]; }
  int height() const override { return opt_.image_size; }
  int width() const override { return opt_.image_size; }
  bool load(size_t i, bool train, uint64_t rng_seed, float* chw) const override;
  std::string source() const override { return "ImageFolder " + dir_; }

  const std::string& path(size_t i) const { return files_[i]; }
  size_t bad_count() const;  // bad images skipped so far, each counted once

 private:
  std::string dir_;
  ImageOptions opt_;
  std::vector<std::string> files_;
  std::vector<int> labels_;
  int num_classes_ = 0;
  mutable std::mutex bad_mutex_;
  mutable std::set<size_t> bad_;
};

std::unique_ptr<ImageFolder> open_image_folder(const std::string& dir, const ImageOptions& opt = {},
                                               size_t limit = 0);

}  // namespace data
