// What the input pipelines hand to training: a Dataset of labelled images and the Batch a Loader fills.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace data {

// The images a `--limit-train/--limit-val N` run keeps: N evenly spread indices, floor(i * size / N),
// rather than the first N, so that a set stored sorted by class (the shared CIFAR-10 test batch, every
// ImageFolder) keeps all its classes. All of them when limit is 0 or not smaller than size.
inline std::vector<size_t> spread_subset(size_t size, size_t limit) {
  size_t n = limit == 0 || limit >= size ? size : limit;
  std::vector<size_t> idx(n);
  for (size_t i = 0; i < n; i++) idx[i] = n == size ? i : (size_t)((unsigned __int128)i * size / n);
  return idx;
}

// A batch: images is float32 NCHW, labels int32 (N). The buffers are sized for the full batch size and
// recycled; only the first n images and labels are valid (n is smaller for the last eval batch, or when
// bad images were skipped).
struct Batch {
  std::vector<float> images;
  std::vector<int32_t> labels;
  int n = 0, c = 3, h = 0, w = 0;
};

class Dataset {
 public:
  virtual ~Dataset() = default;
  virtual size_t size() const = 0;
  virtual int num_classes() const = 0;
  virtual int label(size_t i) const = 0;
  virtual int height() const = 0;  // of the images load() writes
  virtual int width() const = 0;
  // Writes image i, augmented (train) or not (eval) and normalized, as CHW float32 (3 x height x width).
  // rng_seed is the image's seed for this epoch (image_seed in rng.h). Returns false when the image is bad
  // and the dataset skips bad images; throws std::runtime_error naming the file when it fails on them.
  // Safe to call from several threads at once.
  virtual bool load(size_t i, bool train, uint64_t rng_seed, float* chw) const = 0;
  // What the images are, for messages: "ImageFolder <dir>".
  virtual std::string source() const { return "the dataset"; }
};

}  // namespace data
