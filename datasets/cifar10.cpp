#include "datasets/cifar10.h"

#include <algorithm>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <stdexcept>
#include <vector>

#include "datasets/transforms.h"

namespace fs = std::filesystem;

namespace data {

namespace {

constexpr size_t kPixels = 3 * 32 * 32, kRecord = 1 + kPixels;
constexpr size_t kMaxRecords = 10000;  // per batch file, in the official binary version

class Cifar10 : public Dataset {
 public:
  std::vector<uint8_t> labels;  // N
  std::vector<uint8_t> pixels;  // N x 3 x 32 x 32

  size_t size() const override { return labels.size(); }
  int num_classes() const override { return 10; }
  int label(size_t i) const override { return labels[i]; }
  int height() const override { return 32; }
  int width() const override { return 32; }
  bool load(size_t i, bool train, uint64_t rng_seed, float* chw) const override {
    if (train) {
      Rng rng(rng_seed);
      CifarAugment aug = cifar_augment_params(rng);
      cifar_transform(&pixels[i * kPixels], &aug, kCifar10Norm, chw);
    } else {
      cifar_transform(&pixels[i * kPixels], nullptr, kCifar10Norm, chw);
    }
    return true;
  }

  // Appends the records of one batch file after checking it.
  void read(const fs::path& file) {
    auto fail = [&](const std::string& problem) {
      return std::runtime_error("CIFAR-10 " + file.string() + ": " + problem);
    };
    if (!fs::exists(file))
      throw fail("missing (expected data_batch_1.bin … data_batch_5.bin and test_batch.bin)");
    if (!fs::is_regular_file(file)) throw fail("not a regular file");
    size_t bytes = fs::file_size(file);
    if (bytes == 0) throw fail("empty file");
    if (bytes % kRecord)
      throw fail("size " + std::to_string(bytes) +
                 " bytes is not a multiple of the 3073-byte record (1 label + 3072 pixels): truncated or not "
                 "CIFAR-10 binary");
    // Checked before anything is allocated: a file can claim any size (a sparse one costs nothing on disk).
    if (bytes / kRecord > kMaxRecords)
      throw fail(std::to_string(bytes / kRecord) + " records (" + std::to_string(bytes) + " bytes): a CIFAR-10 batch "
                 "file holds " + std::to_string(kMaxRecords) + " (" + std::to_string(kMaxRecords * kRecord) + " bytes)");
    std::vector<uint8_t> buf(bytes);
    std::FILE* f = std::fopen(file.c_str(), "rb");
    if (!f) throw fail("cannot open");
    size_t got = std::fread(buf.data(), 1, bytes, f);
    std::fclose(f);
    if (got != bytes) throw fail("read error");
    size_t n = bytes / kRecord, base = labels.size();
    labels.resize(base + n);
    pixels.resize((base + n) * kPixels);
    for (size_t r = 0; r < n; r++) {
      const uint8_t* rec = &buf[r * kRecord];
      if (rec[0] > 9)
        throw fail("record " + std::to_string(r) + " has label " + std::to_string(rec[0]) + ", not 0-9");
      labels[base + r] = rec[0];
      std::memcpy(&pixels[(base + r) * kPixels], rec + 1, kPixels);
    }
  }
};

bool has_batches(const fs::path& dir) {
  return fs::exists(dir / "data_batch_1.bin") || fs::exists(dir / "test_batch.bin");
}

}  // namespace

std::unique_ptr<Dataset> open_cifar10(const std::string& dir, bool train, size_t limit) {
  auto ds = std::make_unique<Cifar10>();
  if (train)
    for (int b = 1; b <= 5; b++) ds->read(fs::path(dir) / ("data_batch_" + std::to_string(b) + ".bin"));
  else
    ds->read(fs::path(dir) / "test_batch.bin");
  if (limit > 0 && limit < ds->labels.size()) {
    std::vector<size_t> keep = spread_subset(ds->labels.size(), limit);
    for (size_t i = 0; i < keep.size(); i++) {  // keep[i] >= i: compact in place, front to back
      ds->labels[i] = ds->labels[keep[i]];
      std::copy_n(ds->pixels.begin() + keep[i] * kPixels, kPixels, ds->pixels.begin() + i * kPixels);
    }
    ds->labels.resize(limit);
    ds->pixels.resize(limit * kPixels);
  }
  return ds;
}

std::string find_or_fetch_cifar10(const std::string& data_opt, bool fetch) {
  const std::string how =
      "get it with `bash scripts/get-cifar10.sh [DIR]` (downloads into DIR, default data/)";
  if (!data_opt.empty()) {
    for (const fs::path& p : {fs::path(data_opt), fs::path(data_opt) / "cifar-10-batches-bin"})
      if (has_batches(p)) return p.string();
    throw std::runtime_error("CIFAR-10 not found in " + data_opt + " nor in " + data_opt +
                             "/cifar-10-batches-bin; " + how);
  }
  const std::vector<std::string> places = {"data/cifar-10-batches-bin",
                                           "../shared/data/cifar-10-batches-bin"};
  for (const auto& p : places)
    if (has_batches(p)) return p;
  std::string where = places[0] + ", " + places[1];
  const char* no_download = std::getenv("REPQ_NO_DOWNLOAD");
  if (no_download && std::strcmp(no_download, "") != 0 && std::strcmp(no_download, "0") != 0) fetch = false;
  if (!fetch) throw std::runtime_error("CIFAR-10 not found in " + where + " (download disabled); " + how);
  const std::string script = "scripts/get-cifar10.sh";
  if (!fs::exists(script))
    throw std::runtime_error("CIFAR-10 not found in " + where + ", and " + script +
                             " is not here to download it (run from the repository root); " + how);
  std::fprintf(stderr, "CIFAR-10 not found in %s; downloading to data/ with %s ...\n", where.c_str(),
               script.c_str());
  if (std::system(("bash " + script + " data").c_str()) != 0 || !has_batches(places[0]))
    throw std::runtime_error("CIFAR-10 not found in " + where + ", and the download with " + script +
                             " failed; " + how);
  return places[0];
}

}  // namespace data
