// Input pipelines: CIFAR-10 and ImageFolder readers, transforms, the threaded Loader.
// Real-data tests need the shared data folder; the rest write their own files in a temp folder.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "datasets/cifar10.h"
#include "datasets/decode.h"
#include "datasets/image_folder.h"
#include "datasets/loader.h"
#include "datasets/transforms.h"
#include "tests/testing.h"

#define STB_IMAGE_WRITE_IMPLEMENTATION
#define STB_IMAGE_WRITE_STATIC
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#pragma GCC diagnostic ignored "-Wunused-function"
#include <stb_image_write.h>
#pragma GCC diagnostic pop

namespace fs = std::filesystem;
using namespace data;

namespace {

std::string real(const std::string& rel) {
  return shared_data_dir().empty() ? "" : shared_data_dir() + "/" + rel;
}
bool have_real(const std::string& rel) { return !shared_data_dir().empty() && have_path(real(rel)); }

struct TempDir {
  fs::path path;
  TempDir() {
    std::string t = (fs::temp_directory_path() / "repq_data_XXXXXX").string();
    REQUIRE(mkdtemp(t.data()));
    path = t;
  }
  ~TempDir() { fs::remove_all(path); }
  std::string operator/(const std::string& rel) const { return (path / rel).string(); }
};

void write_bytes(const std::string& path, const std::vector<uint8_t>& bytes) {
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream(path, std::ios::binary).write((const char*)bytes.data(), std::streamsize(bytes.size()));
}

std::vector<uint8_t> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// A CIFAR batch file of n records: label r % 10, pixel bytes (r * 7 + k) % 256 (k the byte in the record).
std::vector<uint8_t> cifar_records(int n, int first_label = 0) {
  std::vector<uint8_t> b;
  for (int r = 0; r < n; r++) {
    b.push_back(uint8_t((first_label + r) % 10));
    for (int k = 0; k < 3072; k++) b.push_back(uint8_t((r * 7 + k) % 256));
  }
  return b;
}

void write_cifar_dir(const std::string& dir, int per_file) {
  for (int f = 1; f <= 5; f++)
    write_bytes(dir + "/data_batch_" + std::to_string(f) + ".bin", cifar_records(per_file, f));
  write_bytes(dir + "/test_batch.bin", cifar_records(per_file));
}

// An h x w x 3 image with values (x * 5 + y * 3 + c * 80 + seed) % 256.
std::vector<uint8_t> pattern_image(int h, int w, int seed = 0) {
  std::vector<uint8_t> img(size_t(h) * w * 3);
  for (int y = 0; y < h; y++)
    for (int x = 0; x < w; x++)
      for (int c = 0; c < 3; c++)
        img[(size_t(y) * w + x) * 3 + c] = uint8_t((x * 5 + y * 3 + c * 80 + seed) % 256);
  return img;
}

}  // namespace

void write_png(const std::string& path, int h, int w, int seed) {
  fs::create_directories(fs::path(path).parent_path());
  auto img = pattern_image(h, w, seed);
  REQUIRE(stbi_write_png(path.c_str(), w, h, 3, img.data(), w * 3));
}

namespace {

void write_jpg(const std::string& path, int h, int w, int seed = 0) {
  fs::create_directories(fs::path(path).parent_path());
  auto img = pattern_image(h, w, seed);
  REQUIRE(stbi_write_jpg(path.c_str(), w, h, 3, img.data(), 90));
}

// The message of the std::runtime_error that f throws ("" when none).
template <class F>
std::string error_of(F f) {
  try {
    f();
  } catch (const std::runtime_error& e) {
    return e.what();
  }
  return "";
}

float normalized(int v, const Normalize& n, int c) { return (v / 255.f - n.mean[c]) / n.std[c]; }

// A dataset of n 2 x 2 images: pixel k of image i is i + uniform draw k of its Rng; label i % 10.
// Images in `bad` are skipped; load sleeps `delay` to act slow.
struct FakeDataset : Dataset {
  size_t n;
  std::set<size_t> bad;
  std::chrono::microseconds delay{0};
  explicit FakeDataset(size_t n) : n(n) {}
  size_t size() const override { return n; }
  int num_classes() const override { return 10; }
  int label(size_t i) const override { return int(i % 10); }
  int height() const override { return 2; }
  int width() const override { return 2; }
  bool load(size_t i, bool train, uint64_t seed, float* chw) const override {
    if (delay.count()) std::this_thread::sleep_for(delay);
    if (bad.count(i)) return false;
    Rng rng(seed);
    for (int k = 0; k < 12; k++) chw[k] = float(i) + (train ? float(rng.uniform()) : 0.f);
    return true;
  }
};

// All batches of one epoch: images (n x c x h x w of each batch, concatenated) and labels.
struct Epoch {
  std::vector<float> images;
  std::vector<int32_t> labels;
  std::vector<int> sizes;
};

Epoch run_epoch(Loader& loader, int epoch) {
  Epoch e;
  loader.start_epoch(epoch);
  while (const Batch* b = loader.next()) {
    size_t image = size_t(b->c) * b->h * b->w;
    e.images.insert(e.images.end(), b->images.begin(), b->images.begin() + b->n * image);
    e.labels.insert(e.labels.end(), b->labels.begin(), b->labels.begin() + b->n);
    e.sizes.push_back(b->n);
  }
  return e;
}

}  // namespace

// --- CIFAR-10 ---------------------------------------------------------------------------------------

TEST_CASE("cifar10: the real data has 50,000 train records, 5,000 a class, and 10,000 test records" *
          skip_unless(have_real("cifar-10-batches-bin"),
                      "cifar10 real data: no cifar-10-batches-bin in the shared data")) {
  std::string dir = real("cifar-10-batches-bin");
  auto train = open_cifar10(dir, true);
  CHECK(train->size() == 50000);
  CHECK(train->num_classes() == 10);
  std::vector<int> per_class(10);
  for (size_t i = 0; i < train->size(); i++) per_class[train->label(i)]++;
  for (int c = 0; c < 10; c++) CHECK(per_class[c] == 5000);
  auto test = open_cifar10(dir, false);
  CHECK(test->size() == 10000);
  // Eval images are the record's bytes, normalized.
  auto bytes = read_bytes(dir + "/test_batch.bin");
  std::vector<float> out(3072);
  REQUIRE(test->load(0, false, 0, out.data()));
  CHECK(test->label(0) == bytes[0]);
  for (int k = 0; k < 3072; k++) REQUIRE(out[k] == normalized(bytes[1 + k], kCifar10Norm, k / 1024));
  CHECK(find_or_fetch_cifar10(dir) == dir);
  // The shared test batch is sorted by class: a limited eval set is spread over it, so all classes stay.
  auto small = open_cifar10(dir, false, 512);
  std::vector<int> small_per_class(10);
  for (size_t i = 0; i < small->size(); i++) small_per_class[small->label(i)]++;
  for (int c = 0; c < 10; c++) CHECK(small_per_class[c] >= 50);
}

TEST_CASE("cifar10: every file is checked and a bad one is named with its problem") {
  TempDir tmp;
  std::string dir = tmp / "cifar";
  write_cifar_dir(dir, 3);
  CHECK(open_cifar10(dir, true)->size() == 15);
  CHECK(open_cifar10(dir, false)->size() == 3);
  CHECK(open_cifar10(dir, true, 4)->size() == 4);

  std::string b3 = dir + "/data_batch_3.bin";
  fs::rename(b3, b3 + ".away");
  std::string e = error_of([&] { open_cifar10(dir, true); });
  CHECK(e.find(b3) != std::string::npos);
  CHECK(e.find("missing") != std::string::npos);
  fs::rename(b3 + ".away", b3);

  std::string b2 = dir + "/data_batch_2.bin";
  auto bytes = cifar_records(3);
  bytes.resize(bytes.size() - 100);  // truncated
  write_bytes(b2, bytes);
  e = error_of([&] { open_cifar10(dir, true); });
  CHECK(e.find(b2) != std::string::npos);
  CHECK(e.find("not a multiple of the 3073-byte record") != std::string::npos);
  write_bytes(b2, {});
  e = error_of([&] { open_cifar10(dir, true); });
  CHECK(e.find(b2) != std::string::npos);
  CHECK(e.find("empty") != std::string::npos);

  std::string test = dir + "/test_batch.bin";
  bytes = cifar_records(3);
  bytes[3073] = 10;  // label of record 1
  write_bytes(test, bytes);
  e = error_of([&] { open_cifar10(dir, false); });
  CHECK(e.find(test) != std::string::npos);
  CHECK(e.find("record 1 has label 10") != std::string::npos);

  // a file of 3,000,000 records (9.2 GB, sparse: nothing on disk) is refused by its size, before any
  // allocation (it gave std::bad_alloc under a memory limit)
  {
    std::FILE* f = std::fopen(test.c_str(), "wb");
    REQUIRE(f);
    REQUIRE(::ftruncate(::fileno(f), (off_t)3000000 * 3073) == 0);
    std::fclose(f);
  }
  e = error_of([&] { open_cifar10(dir, false); });
  CHECK(e.find(test) != std::string::npos);
  CHECK(e.find("3000000 records") != std::string::npos);
  CHECK(e.find("holds 10000") != std::string::npos);
}

TEST_CASE("cifar10: find_or_fetch_cifar10 uses the given folder and says where it looked") {
  TempDir tmp;
  write_cifar_dir(tmp / "data/cifar-10-batches-bin", 1);
  CHECK(find_or_fetch_cifar10(tmp / "data") == tmp / "data/cifar-10-batches-bin");
  CHECK(find_or_fetch_cifar10(tmp / "data/cifar-10-batches-bin") == tmp / "data/cifar-10-batches-bin");
  std::string e = error_of([&] { find_or_fetch_cifar10(tmp / "nowhere"); });
  CHECK(e.find(tmp / "nowhere") != std::string::npos);
  CHECK(e.find("scripts/get-cifar10.sh") != std::string::npos);

  // Not found in data/ or ../shared/data, the download forbidden by the flag or by REPQ_NO_DOWNLOAD.
  fs::path cwd = fs::current_path();
  fs::create_directories(tmp.path / "empty");
  fs::current_path(tmp.path / "empty");
  e = error_of([] { find_or_fetch_cifar10("", false); });
  setenv("REPQ_NO_DOWNLOAD", "1", 1);
  std::string e_env = error_of([] { find_or_fetch_cifar10(""); });
  unsetenv("REPQ_NO_DOWNLOAD");
  fs::current_path(cwd);
  for (const std::string& m : {e, e_env}) {
    CHECK(m.find("CIFAR-10 not found in data/cifar-10-batches-bin, ../shared/data/cifar-10-batches-bin") !=
          std::string::npos);
    CHECK(m.find("download disabled") != std::string::npos);
    CHECK(m.find("bash scripts/get-cifar10.sh") != std::string::npos);
  }
}

TEST_CASE("cifar10: training crop lies in the padded image, flip mirrors exactly, normalization exact") {
  TempDir tmp;
  write_cifar_dir(tmp / "c", 2);
  auto ds = open_cifar10(tmp / "c", false);
  auto bytes = read_bytes(tmp / "c/test_batch.bin");
  const uint8_t* planes = &bytes[1];  // record 0
  // The padded image: 0 outside the 32 x 32 image.
  auto padded = [&](int c, int y, int x) {
    return y < 4 || y >= 36 || x < 4 || x >= 36 ? 0 : planes[c * 1024 + (y - 4) * 32 + x - 4];
  };
  std::vector<float> out(3072);
  std::set<std::pair<int, int>> offsets;
  int flips = 0, wrong = 0;
  for (uint64_t seed = 0; seed < 1000; seed++) {
    Rng rng(seed);
    CifarAugment a = cifar_augment_params(rng);
    REQUIRE(a.crop.top >= 0);
    REQUIRE(a.crop.left >= 0);
    REQUIRE(a.crop.top + a.crop.height <= 40);
    REQUIRE(a.crop.left + a.crop.width <= 40);
    offsets.insert({a.crop.top, a.crop.left});
    flips += a.flip;
    REQUIRE(ds->load(0, true, seed, out.data()));
    for (int c = 0; c < 3; c++)
      for (int y = 0; y < 32; y++)
        for (int x = 0; x < 32; x++) {
          int sx = a.flip ? 31 - x : x;
          wrong += out[(c * 32 + y) * 32 + x] !=
                   normalized(padded(c, a.crop.top + y, a.crop.left + sx), kCifar10Norm, c);
        }
  }
  CHECK(wrong == 0);
  CHECK(offsets.size() == 81);  // every crop position of the padded image
  CHECK(flips > 400);
  CHECK(flips < 600);

  REQUIRE(ds->load(0, false, 0, out.data()));
  for (int k = 0; k < 3072; k++) REQUIRE(out[k] == normalized(planes[k], kCifar10Norm, k / 1024));
  // The constants: (v / 255 - mean) / std.
  CHECK(normalized(0, kCifar10Norm, 0) == doctest::Approx(-0.4914 / 0.2470).epsilon(1e-6));
  CHECK(normalized(255, kCifar10Norm, 2) == doctest::Approx((1 - 0.4465) / 0.2616).epsilon(1e-6));
  CHECK(normalized(128, kImageNetNorm, 1) == doctest::Approx((128 / 255.0 - 0.456) / 0.224).epsilon(1e-6));
}

// --- Transforms -------------------------------------------------------------------------------------

TEST_CASE("transforms: RandomResizedCrop boxes stay inside and respect the scale and ratio bounds") {
  for (auto [h, w] : std::vector<std::pair<int, int>>{
           {375, 500}, {500, 375}, {224, 224}, {1377, 1836}, {31, 17}, {100, 1000}, {20, 1000}}) {
    int fallbacks = 0;
    for (uint64_t seed = 0; seed < 2000; seed++) {
      Rng rng(seed);
      Box b = random_resized_crop_box(h, w, rng);
      REQUIRE(b.top >= 0);
      REQUIRE(b.left >= 0);
      REQUIRE(b.height > 0);
      REQUIRE(b.width > 0);
      REQUIRE(b.top + b.height <= h);
      REQUIRE(b.left + b.width <= w);
      // w and h are rounded from sqrt(area * ratio) and sqrt(area / ratio): allow half a pixel each.
      double area = double(h) * w;
      bool in_bounds =
          (b.width + 0.5) * (b.height + 0.5) >= 0.08 * area && (b.width - 0.5) * (b.height - 0.5) <= area &&
          (b.width + 0.5) / (b.height - 0.5) >= 3.0 / 4 && (b.width - 0.5) / (b.height + 0.5) <= 4.0 / 3;
      if (!in_bounds) {  // only the center-crop fallback may break the bounds, and it keeps a whole side
        fallbacks++;
        REQUIRE((b.width == w || b.height == h));
        REQUIRE(b.top == (h - b.height) / 2);
        REQUIRE(b.left == (w - b.width) / 2);
      }
    }
    // 20 x 1000: every try is too high, the fallback is 20 x round(20 * 4/3), 0.027 of the image.
    CHECK(fallbacks == (h == 20 ? 2000 : 0));
  }
  // Always the fallback: torchvision's center crop with the ratio clamped.
  Rng rng(1);
  Box b = random_resized_crop_box(1, 100, rng);  // in ratio 100 > 4/3: h = 1, w = round(4/3)
  CHECK((b.top == 0 && b.left == 49 && b.height == 1 && b.width == 1));
  b = random_resized_crop_box(100, 1, rng);  // in ratio 0.01 < 3/4: w = 1, h = round(1 / 0.75)
  CHECK((b.top == 49 && b.left == 0 && b.height == 1 && b.width == 1));
  b = random_resized_crop_box(3, 300, rng);  // h = 3, w = round(3 * 4/3) = 4
  CHECK((b.top == 0 && b.left == 148 && b.height == 3 && b.width == 4));

  // The ratio is log-uniform: log(w/h) has mean 0 and half the ratios are below 1 (a uniform ratio in
  // [3/4, 4/3] gives a mean of 0.028 and 43%). Scales cover [0.08, 1].
  double sum_log = 0, min_scale = 1, max_scale = 0;
  int below = 0, n = 20000;
  for (int i = 0; i < n; i++) {
    Rng r(1000 + i);
    Box c = random_resized_crop_box(1000, 1000, r);
    sum_log += std::log(double(c.width) / c.height);
    below += c.width < c.height;
    min_scale = std::min(min_scale, c.width * c.height / 1e6);
    max_scale = std::max(max_scale, c.width * c.height / 1e6);
  }
  CHECK(std::abs(sum_log / n) < 0.006);
  CHECK(std::abs(below / double(n) - 0.5) < 0.02);
  CHECK(min_scale < 0.085);
  CHECK(max_scale > 0.95);
}

TEST_CASE("transforms: resize and center crop sizes as torchvision") {
  int h, w;
  resize_shorter_dims(375, 500, 256, h, w);
  CHECK((h == 256 && w == 341));
  resize_shorter_dims(1836, 1377, 256, h, w);
  CHECK((h == 341 && w == 256));
  resize_shorter_dims(224, 224, 256, h, w);
  CHECK((h == 256 && w == 256));
  Box b = center_crop_box(256, 341, 224);  // round(117 / 2) = 58 (half to even)
  CHECK((b.top == 16 && b.left == 58 && b.height == 224 && b.width == 224));
  b = center_crop_box(256, 343, 224);  // round(119 / 2) = 60
  CHECK(b.left == 60);
}

TEST_CASE("transforms: eval resize and center crop of a constant image is constant") {
  for (auto [h, w] : std::vector<std::pair<int, int>>{
           {375, 500}, {500, 375}, {100, 150}, {224, 224}, {1600, 2400}, {7, 300}}) {
    std::vector<uint8_t> img(size_t(h) * w * 3);
    for (size_t k = 0; k < img.size(); k++) img[k] = uint8_t(k % 3 == 0 ? 77 : k % 3 == 1 ? 255 : 0);
    int rh, rw;
    resize_shorter_dims(h, w, 256, rh, rw);
    std::vector<float> out(3 * 224 * 224);
    resize_crop(img.data(), h, w, Box{0, 0, h, w}, rh, rw, center_crop_box(rh, rw, 224), false, kImageNetNorm,
                out.data());
    const int v[3] = {77, 255, 0};
    float max_diff = 0;
    for (int c = 0; c < 3; c++)
      for (int k = 0; k < 224 * 224; k++)
        max_diff = std::max(max_diff, std::abs(out[c * 224 * 224 + k] - normalized(v[c], kImageNetNorm, c)));
    INFO(h, "x", w);
    CHECK(max_diff < 1e-5f);
  }
}

TEST_CASE("transforms: a flipped resize mirrors the unflipped one exactly") {
  auto img = pattern_image(50, 70);
  std::vector<float> a(3 * 30 * 40), b(a.size());
  resize_crop(img.data(), 50, 70, Box{3, 5, 41, 60}, 30, 40, Box{0, 0, 30, 40}, false, kImageNetNorm,
              a.data());
  resize_crop(img.data(), 50, 70, Box{3, 5, 41, 60}, 30, 40, Box{0, 0, 30, 40}, true, kImageNetNorm,
              b.data());
  for (int c = 0; c < 3; c++)
    for (int y = 0; y < 30; y++)
      for (int x = 0; x < 40; x++) REQUIRE(a[(c * 30 + y) * 40 + x] == b[(c * 30 + y) * 40 + 39 - x]);
  CHECK_THROWS_AS(resize_crop(img.data(), 50, 70, Box{3, 5, 48, 60}, 30, 40, Box{0, 0, 30, 40}, false,
                              kImageNetNorm, a.data()),
                  std::invalid_argument);  // the box leaves the image
}

namespace {

// tests/reference/resize_aa.bin, written by tests/reference/make_resize_reference.py.
struct ResizeReference {
  struct Case {
    Box box;
    int out_h, out_w;
    std::vector<float> chw;
  };
  int h = 0, w = 0;
  std::vector<Case> cases;
  int h2 = 0, w2 = 0;  // the PIL case's synthetic input
  int resize = 0, crop = 0;
  std::vector<uint8_t> pil;  // 3 x crop x crop

  explicit ResizeReference(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    REQUIRE(in);
    auto i32 = [&] {
      int32_t v = 0;
      in.read((char*)&v, 4);
      return v;
    };
    REQUIRE(i32() == 0x31415352);
    REQUIRE(i32() == 2);
    h = i32();
    w = i32();
    int n = i32();
    for (int k = 0; k < n; k++) {
      Case c;
      c.box.top = i32(), c.box.left = i32(), c.box.height = i32(), c.box.width = i32();
      c.out_h = i32(), c.out_w = i32();
      c.chw.resize(size_t(3) * c.out_h * c.out_w);
      in.read((char*)c.chw.data(), std::streamsize(c.chw.size() * 4));
      cases.push_back(std::move(c));
    }
    h2 = i32();
    w2 = i32();
    resize = i32();
    crop = i32();
    pil.resize(size_t(3) * crop * crop);
    in.read((char*)pil.data(), std::streamsize(pil.size()));
    REQUIRE(in);
  }
};

}  // namespace

// The pattern of make_resize_reference.py, h x w x 3.
static std::vector<uint8_t> reference_pattern(int h, int w) {
  std::vector<uint8_t> img(size_t(h) * w * 3);
  for (int y = 0; y < h; y++)
    for (int x = 0; x < w; x++)
      for (int c = 0; c < 3; c++) img[(size_t(y) * w + x) * 3 + c] = uint8_t((x * x * 7 + y * 13 + c * 85 + x * y * 3) % 256);
  return img;
}

TEST_CASE("transforms: antialiased bilinear resize matches torch interpolate(antialias=True)") {
  ResizeReference ref("tests/reference/resize_aa.bin");
  std::vector<uint8_t> img = reference_pattern(ref.h, ref.w);
  REQUIRE(ref.cases.size() == 4);
  for (const auto& c : ref.cases) {
    std::vector<float> out(c.chw.size());
    resize_crop(img.data(), ref.h, ref.w, c.box, c.out_h, c.out_w, Box{0, 0, c.out_h, c.out_w}, false,
                kNoNorm, out.data());
    float max_diff = 0;
    for (size_t k = 0; k < out.size(); k++) max_diff = std::max(max_diff, std::abs(out[k] - c.chw[k]));
    INFO("case ", c.box.height, "x", c.box.width, " -> ", c.out_h, "x", c.out_w);
    CHECK(max_diff < 1e-3f);  // of values in [0, 255]; measured 4e-4
  }
}

TEST_CASE("transforms: eval resize and crop match torchvision's PIL path") {
  ResizeReference ref("tests/reference/resize_aa.bin");
  std::vector<uint8_t> img = reference_pattern(ref.h2, ref.w2);
  int rh, rw;
  resize_shorter_dims(ref.h2, ref.w2, ref.resize, rh, rw);
  std::vector<float> out(ref.pil.size());
  resize_crop(img.data(), ref.h2, ref.w2, Box{0, 0, ref.h2, ref.w2}, rh, rw, center_crop_box(rh, rw, ref.crop), false,
              kNoNorm, out.data());
  // PIL rounds to uint8 after each pass (and works in fixed point): allow a little.
  double sum = 0, max_diff = 0;
  for (size_t k = 0; k < out.size(); k++) {
    double d = std::abs(out[k] - ref.pil[k]);
    sum += d;
    max_diff = std::max(max_diff, d);
  }
  INFO("mean |diff| ", sum / out.size(), ", max ", max_diff, " (of 255)");
  CHECK(sum / out.size() < 0.4);  // measured 0.27 and 0.88
  CHECK(max_diff < 1.5);
}

// --- ImageFolder ------------------------------------------------------------------------------------

TEST_CASE("image folder: every imagenet-sample image decodes and has its standard ILSVRC label" *
          skip_unless(have_real("imagenet-sample"), "imagenet-sample: not in the shared data")) {
  ImageOptions opt;
  opt.synsets = real("imagenet-sample/LOC_synset_mapping.txt");
  auto ds = open_image_folder(real("imagenet-sample/val"), opt);
  REQUIRE(ds->size() == 99);
  CHECK(ds->num_classes() == 1000);
  // The standard index: the synset's line in the mapping file, read here on its own.
  std::map<std::string, int> index;
  std::ifstream in(opt.synsets);
  std::string line;
  for (int n = 0; std::getline(in, line); n++) index[line.substr(0, 9)] = n;
  int grey = 0, apostrophes = 0, max_w = 0, max_h = 0;  // of the largest image
  Image img;
  std::vector<float> out(3 * 224 * 224);
  for (size_t i = 0; i < ds->size(); i++) {
    const std::string& p = ds->path(i);
    std::string synset = fs::path(p).parent_path().filename().string();
    CHECK(ds->label(i) == index.at(synset));
    decode_image(p, img);
    grey += img.channels_in_file == 1;
    apostrophes += p.find('\'') != std::string::npos;
    if (img.w * img.h > max_w * max_h) max_w = img.w, max_h = img.h;
    REQUIRE(ds->load(i, false, 0, out.data()));
    REQUIRE(std::all_of(out.begin(), out.end(), [](float v) { return std::isfinite(v) && std::abs(v) < 3; }));
  }
  CHECK(grey == 23);
  CHECK(apostrophes == 4);
  CHECK((max_w == 2400 && max_h == 1600));
  // A few indices known by heart: brambling 10, whiptail 41, alligator lizard 44.
  for (size_t i = 0; i < 3; i++) CHECK(ds->label(i) == std::vector<int>{10, 41, 44}[i]);
}

TEST_CASE("image folder: imagenette has 10 classes by folder name, or standard labels with the synsets file" *
          skip_unless(have_real("imagenette"), "imagenette: not in the shared data")) {
  auto train = open_image_folder(real("imagenette/train"));
  auto val = open_image_folder(real("imagenette/val"));
  CHECK(train->num_classes() == 10);
  CHECK(train->size() == 1000);
  CHECK(val->size() == 500);
  std::vector<int> per_class(10);
  for (size_t i = 0; i < train->size(); i++) per_class[train->label(i)]++;
  CHECK(per_class == std::vector<int>(10, 100));
  CHECK(train->label(0) == 0);
  CHECK(train->label(999) == 9);
  std::vector<float> out(3 * 224 * 224);
  for (size_t i = 0; i < train->size(); i += 100) {
    REQUIRE(train->load(i, true, i, out.data()));
    REQUIRE(val->load(i / 2, false, 0, out.data()));
  }
  if (have_real("imagenet-sample/LOC_synset_mapping.txt")) {
    ImageOptions opt;
    opt.synsets = real("imagenet-sample/LOC_synset_mapping.txt");
    auto standard = open_image_folder(real("imagenette/train"), opt);
    CHECK(standard->num_classes() == 1000);
    CHECK(standard->label(0) == 0);      // n01440764 tench
    CHECK(standard->label(999) == 701);  // n03888257 parachute
  }
}

TEST_CASE("image folder: file names with spaces and quotes, any case of extension, PNG and JPEG, greyscale") {
  TempDir tmp;
  write_png(tmp / "d/b cls/it's a \"png\".PnG", 40, 30);
  write_jpg(tmp / "d/b cls/x y.jpeg", 20, 50);
  write_jpg(tmp / "d/a/one.JPG", 33, 33);
  write_bytes(tmp / "d/a/notes.txt", {'h', 'i'});  // not an image name: ignored
  std::vector<uint8_t> grey(16 * 16, 200);
  REQUIRE(stbi_write_png((tmp / "d/a/grey.png").c_str(), 16, 16, 1, grey.data(), 16));
  auto ds = open_image_folder(tmp / "d");
  REQUIRE(ds->size() == 4);
  CHECK(ds->num_classes() == 2);
  CHECK(ds->path(0) == tmp / "d/a/grey.png");
  CHECK(ds->path(1) == tmp / "d/a/one.JPG");
  CHECK(ds->path(3) == tmp / "d/b cls/x y.jpeg");
  CHECK(std::vector<int>{ds->label(0), ds->label(1), ds->label(2), ds->label(3)} ==
        std::vector<int>{0, 0, 1, 1});
  CHECK(open_image_folder(tmp / "d", {}, 3)->size() == 3);
  auto two = open_image_folder(tmp / "d", {}, 2);  // limit: spread over the set, so both classes stay
  CHECK(two->path(1) == ds->path(2));
  CHECK(std::vector<int>{two->label(0), two->label(1)} == std::vector<int>{0, 1});
  std::vector<float> out(3 * 224 * 224);
  for (size_t i = 0; i < ds->size(); i++) {
    REQUIRE(ds->load(i, true, 7, out.data()));
    REQUIRE(ds->load(i, false, 0, out.data()));
  }
  // Greyscale becomes RGB: three equal planes of 200.
  REQUIRE(ds->load(0, false, 0, out.data()));
  for (int c = 0; c < 3; c++)
    CHECK(out[c * 224 * 224 + 1000] == doctest::Approx(normalized(200, kImageNetNorm, c)).epsilon(1e-5));
}

TEST_CASE("image folder: bad files and folders give errors that name them") {
  TempDir tmp;
  write_jpg(tmp / "good.jpg", 64, 64);
  auto jpg = read_bytes(tmp / "good.jpg");
  write_png(tmp / "good.png", 64, 64);
  auto png = read_bytes(tmp / "good.png");
  std::vector<uint8_t> garbage = {0xFF, 0xD8, 0xFF, 0xE0, 1, 2, 3, 4, 5, 6, 7, 8, 9};
  std::vector<uint8_t> text = {'n', 'o', 't', ' ', 'a', 'n', ' ', 'i', 'm', 'a', 'g', 'e', '\n'};
  struct Bad {
    std::string name;
    std::vector<uint8_t> bytes;
    std::string problem;
  };
  std::vector<Bad> bads = {
      {"empty.JPEG", {}, "empty image file"},
      {"corrupt.JPEG", garbage, "corrupt or truncated image"},
      {"text.JPEG", text, "not a JPEG or PNG file"},
      {"truncated.JPEG", std::vector<uint8_t>(jpg.begin(), jpg.begin() + jpg.size() * 2 / 3),
       "corrupt or truncated image"},
      {"no_end.JPEG", std::vector<uint8_t>(jpg.begin(), jpg.end() - 2), "corrupt or truncated image"},
      {"truncated.png", std::vector<uint8_t>(png.begin(), png.begin() + png.size() * 2 / 3),
       "corrupt or truncated image"},
      {"no_end.png", std::vector<uint8_t>(png.begin(), png.end() - 12), "corrupt or truncated image"},
  };
  Image img;
  for (const auto& b : bads) {
    std::string path = tmp / ("bad/" + b.name);
    write_bytes(path, b.bytes);
    std::string e = error_of([&] { decode_image(path, img); });
    INFO(e);
    CHECK(e.find(path) != std::string::npos);
    CHECK(e.find(b.problem) != std::string::npos);
  }
  CHECK(error_of([&] { decode_image(tmp / "missing.jpg", img); }).find(tmp / "missing.jpg") !=
        std::string::npos);
  decode_image(tmp / "good.jpg", img);  // the full file is fine
  CHECK(img.w == 64);

  // Folders: an empty class folder, a folder missing from the synsets file, no class folders.
  fs::create_directories(tmp.path / "f/n01/");
  write_jpg(tmp / "f/n01/a.jpg", 8, 8);
  fs::create_directories(tmp.path / "f/n02");
  std::string e = error_of([&] { open_image_folder(tmp / "f"); });
  CHECK(e.find(tmp / "f/n02") != std::string::npos);
  CHECK(e.find("has no images") != std::string::npos);
  write_jpg(tmp / "f/n02/b.jpg", 8, 8);
  write_bytes(tmp / "synsets.txt", {'n', '0', '1', ' ', 'x', '\n'});
  ImageOptions opt;
  opt.synsets = tmp / "synsets.txt";
  e = error_of([&] { open_image_folder(tmp / "f", opt); });
  CHECK(e.find("n02 is not a synset of " + opt.synsets) != std::string::npos);
  CHECK(error_of([&] { open_image_folder(tmp / "bad"); }).find("no class folders") != std::string::npos);
  CHECK(error_of([&] { open_image_folder(tmp / "nothing"); }).find(tmp / "nothing") != std::string::npos);
}

TEST_CASE("decode: every kind of JPEG and PNG decodes to PIL's pixels (tests/reference/decode)") {
  // Baseline 4:2:0, progressive, grey and CMYK JPEGs; palette with transparency, grey + alpha, RGBA,
  // 1-bit grey, 16-bit RGB and interlaced PNGs, written by tests/reference/make_decode_images.py.
  std::ifstream list("tests/reference/decode/expected.txt");
  REQUIRE(list);
  std::string name;
  int w = 0, h = 0, channels = 0, tolerance = 0, files = 0;
  Image img;
  while (list >> name >> w >> h >> channels >> tolerance) {
    INFO(name);
    const std::string path = "tests/reference/decode/" + name;
    decode_image(path, img);
    CHECK(img.w == w);
    CHECK(img.h == h);
    CHECK(img.channels_in_file == channels);
    const std::vector<uint8_t> want = read_bytes(path + ".rgb");
    REQUIRE(img.pixels.size() == want.size());
    int diff = 0;
    for (size_t i = 0; i < want.size(); i++) diff = std::max(diff, std::abs(int(img.pixels[i]) - int(want[i])));
    CHECK(diff <= tolerance);
    files++;
  }
  CHECK(files == 11);
}

TEST_CASE("decode: a JPEG libjpeg only warns about is refused, unless the warning leaves the pixels whole") {
  TempDir tmp;
  Image img;
  for (std::string name : {"baseline-420.jpg", "progressive.jpg"}) {
    const std::vector<uint8_t> jpg = read_bytes("tests/reference/decode/" + name);
    REQUIRE(jpg.size() > 100);
    // Cut in its scan data: libjpeg would decode the rest as grey, with a warning.
    const std::string cut = tmp / ("cut-" + name);
    write_bytes(cut, std::vector<uint8_t>(jpg.begin(), jpg.end() - 40));
    CHECK(error_of([&] { decode_image(cut, img); }) ==
          cut + ": corrupt or truncated image (libjpeg: Premature end of JPEG file)");
    // Bytes before the end-of-image marker, as in a few ImageNet training files: a warning, and the same pixels.
    std::vector<uint8_t> padded(jpg.begin(), jpg.end() - 2);
    padded.insert(padded.end(), {0, 0, 0, 0, 0xFF, 0xD9});
    write_bytes(tmp / ("padded-" + name), padded);
    decode_image(tmp / ("padded-" + name), img);
    CHECK(img.pixels == read_bytes("tests/reference/decode/" + name + ".rgb"));
  }
}

// --- Loader -----------------------------------------------------------------------------------------

TEST_CASE("loader: a seed gives the same batches with 1, 2 or 3 threads; epochs differ") {
  TempDir tmp;
  write_cifar_dir(tmp / "c", 40);
  auto ds = open_cifar10(tmp / "c", true);  // 200 images
  Loader one(*ds, 16, true, 42, 1), two(*ds, 16, true, 42, 2), three(*ds, 16, true, 42, 3, 1);
  CHECK(one.batches_per_epoch() == 12);
  Epoch a = run_epoch(one, 0), b = run_epoch(two, 0), c = run_epoch(three, 0);
  CHECK(a.sizes == std::vector<int>(12, 16));
  CHECK(a.labels == b.labels);
  CHECK(a.labels == c.labels);
  CHECK(a.images == b.images);
  CHECK(a.images == c.images);
  Epoch a1 = run_epoch(one, 1), b1 = run_epoch(two, 1);
  CHECK(a1.images == b1.images);
  CHECK(a1.labels != a.labels);
  Loader other(*ds, 16, true, 43, 2);
  CHECK(run_epoch(other, 0).labels != a.labels);
  CHECK(run_epoch(one, 0).images == a.images);  // an epoch repeats
}

TEST_CASE("loader: training shuffles and drops the partial batch, evaluation keeps order and it") {
  FakeDataset ds(10);
  Loader train(ds, 4, true, 1, 2), eval(ds, 4, false, 1, 2);
  CHECK(train.batches_per_epoch() == 2);
  CHECK(eval.batches_per_epoch() == 3);
  Epoch t = run_epoch(train, 0), e = run_epoch(eval, 0);
  CHECK(t.sizes == std::vector<int>{4, 4});
  CHECK(e.sizes == std::vector<int>{4, 4, 2});
  std::set<int> seen;
  for (int k = 0; k < 8; k++) seen.insert(int(t.images[k * 12]));  // pixel 0 is i + a draw in [0, 1)
  CHECK(seen.size() == 8);
  for (int k = 0; k < 10; k++) CHECK(e.images[k * 12] == float(k));
  CHECK(e.labels == std::vector<int32_t>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9});
}

TEST_CASE("loader: a batch larger than the data set is the data set; buffers beyond the memory are refused") {
  FakeDataset ds(10);
  Loader eval(ds, 100000000, false, 1, 2);  // its buffers were 10^8 images each: std::bad_alloc
  CHECK(eval.batches_per_epoch() == 1);
  CHECK(run_epoch(eval, 0).sizes == std::vector<int>{10});
  struct Huge : FakeDataset {  // 10^7 images of 3 x 10^4 x 10^4
    Huge() : FakeDataset(10000000) {}
    int height() const override { return 10000; }
    int width() const override { return 10000; }
  } huge;
  CHECK_THROWS_WITH_AS(Loader(huge, 64, false, 1, 2), doctest::Contains("batch size 64: the loader's 5 batch buffers of 64 images "
                                                                         "of 3x10000x10000 need 384.0 GB, more than half of"),
                       std::runtime_error);
}

TEST_CASE("loader: skip mode counts bad images, fail mode rethrows the file's error") {
  TempDir tmp;
  for (int i = 0; i < 4; i++) write_png(tmp / ("d/c/good" + std::to_string(i) + ".png"), 24, 24, i);
  write_bytes(tmp / "d/c/bad0.png", {});
  write_bytes(tmp / "d/c/bad1.JPEG", {'x', 'y'});
  ImageOptions opt;
  opt.image_size = 16;
  opt.resize_size = 20;
  opt.bad_images = parse_bad_images("skip");
  CHECK(parse_bad_images("fail") == BadImages::fail);
  CHECK_THROWS_AS(parse_bad_images("ignore"), std::invalid_argument);
  auto ds = open_image_folder(tmp / "d", opt);
  REQUIRE(ds->size() == 6);
  Loader loader(*ds, 4, false, 0, 2);
  for (int epoch = 0; epoch < 2; epoch++) {
    Epoch e = run_epoch(loader, epoch);
    CHECK(e.sizes == std::vector<int>{2, 2});  // bad0, bad1 first in sorted order
    CHECK(loader.skipped() == 2);
  }
  CHECK(ds->bad_count() == 2);

  opt.bad_images = BadImages::fail;
  auto strict = open_image_folder(tmp / "d", opt);
  Loader failing(*strict, 4, true, 0, 2);
  failing.start_epoch(0);
  std::string e = error_of([&] {
    while (failing.next()) {
    }
  });
  CHECK(e.find(tmp / "d/c/bad") != std::string::npos);
}

TEST_CASE("loader: destroyed or restarted mid-epoch, the workers stop") {
  FakeDataset ds(2000);
  ds.delay = std::chrono::microseconds(200);
  {
    Loader loader(ds, 10, true, 5, 2);
    loader.start_epoch(0);
    REQUIRE(loader.next());
  }  // destroyed with 199 batches to go
  Loader loader(ds, 10, false, 5, 2);
  loader.start_epoch(0);
  REQUIRE(loader.next());
  Epoch e = run_epoch(loader, 1);
  CHECK(e.sizes.size() == 200);
  CHECK(e.labels.size() == 2000);
}

// --- Hostile inputs -----------------------------------------------------------------------------------

namespace {

// A small JPEG whose frame header (SOF0) declares w x h pixels: a decompression bomb of a few hundred bytes.
std::vector<uint8_t> jpeg_declaring(const TempDir& tmp, int w, int h) {
  write_jpg(tmp / "small.jpg", 8, 8);
  std::vector<uint8_t> b = read_bytes(tmp / "small.jpg");
  for (size_t i = 0; i + 9 < b.size(); i++)
    if (b[i] == 0xFF && b[i + 1] == 0xC0) {
      b[i + 5] = uint8_t(h >> 8), b[i + 6] = uint8_t(h), b[i + 7] = uint8_t(w >> 8), b[i + 8] = uint8_t(w);
      return b;
    }
  FAIL("no SOF0 marker");
  return b;
}

}  // namespace

TEST_CASE("image folder: a JPEG declaring 26000 x 26000 pixels is refused from its header, or skipped and counted") {
  TempDir tmp;
  const std::string bomb = tmp / "d/c/bomb.jpg";
  write_bytes(bomb, jpeg_declaring(tmp, 26000, 26000));
  REQUIRE(fs::file_size(bomb) < 1000);
  Image img;
  CHECK(error_of([&] { decode_image(bomb, img); }) ==
        bomb + ": 26000 x 26000 pixels, more than the limit of 67108864 (ImageOptions::max_pixels, ./train --max-image-pixels)");
  write_png(tmp / "d/c/good.png", 16, 12);
  CHECK(error_of([&] { decode_image(tmp / "d/c/good.png", img, 191); }).find("12 x 16 pixels, more than the limit of 191") !=
        std::string::npos);
  decode_image(tmp / "d/c/good.png", img, 192);  // exactly at the limit
  CHECK(img.w == 12);

  ImageOptions opt;
  opt.image_size = 8;
  opt.resize_size = 8;
  std::vector<float> out(3 * 8 * 8);
  auto ds = open_image_folder(tmp / "d", opt);
  REQUIRE(ds->path(0) == bomb);
  CHECK(error_of([&] { ds->load(0, false, 0, out.data()); }).find(bomb + ": 26000 x 26000 pixels") == 0);
  opt.bad_images = BadImages::skip;
  ds = open_image_folder(tmp / "d", opt);
  Loader loader(*ds, 2, false, 0, 1);
  Epoch e = run_epoch(loader, 0);
  CHECK(e.sizes == std::vector<int>{1});
  CHECK(loader.skipped() == 1);
  opt.max_pixels = 0;
  CHECK(error_of([&] { open_image_folder(tmp / "d", opt); }) == "ImageFolder: max_pixels must be at least 1, got 0");
}

TEST_CASE("image folder: a 3,000,000 x 1 image, whose resize overflows an int, is a bad image, not a crash") {
  int h = 0, w = 0;
  CHECK_FALSE(resize_shorter_dims(1, 10000000, 256, h, w));
  CHECK_FALSE(resize_shorter_dims(10000000, 1, 256, h, w));
  CHECK_FALSE(resize_shorter_dims(0, 5, 256, h, w));
  CHECK(resize_shorter_dims(1, 1000000, 256, h, w));
  CHECK(h == 256);
  CHECK(w == 256000000);

  TempDir tmp;
  const std::string line = tmp / "d/c/line.png";
  fs::create_directories(tmp.path / "d/c");
  std::vector<uint8_t> grey(3000000, 128);
  REQUIRE(stbi_write_png(line.c_str(), 3000000, 1, 1, grey.data(), 3000000));
  ImageOptions opt;
  opt.image_size = 16;
  opt.resize_size = 1000;
  std::vector<float> out(3 * 16 * 16);
  auto ds = open_image_folder(tmp / "d", opt);
  const std::string want = line + ": a 3000000 x 1 image is too elongated: its shorter side resized to 1000 makes the longer over 2^31 - 1 pixels";
  CHECK(error_of([&] { ds->load(0, false, 0, out.data()); }) == want);
  CHECK(error_of([&] { ds->load(0, true, 0, out.data()); }) == want);  // train and eval agree on what is bad
}

TEST_CASE("loader: a batch of only skipped images is passed over; an epoch of only bad images names the folder") {
  FakeDataset ds(12);
  ds.bad = {4, 5, 6, 7, 9};
  Loader eval(ds, 4, false, 0, 2);
  Epoch e = run_epoch(eval, 0);
  CHECK(e.sizes == std::vector<int>{4, 3});  // the second batch had only bad images
  CHECK(eval.skipped() == 5);
  ds.bad = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11};
  Loader train(ds, 5, true, 0, 2);
  train.start_epoch(0);
  CHECK(error_of([&] { train.next(); }) == "the dataset: all 10 images of the epoch were bad and skipped (--bad-images skip)");
  CHECK(error_of([&] { train.next(); }).find("all 10 images") != std::string::npos);  // again until start_epoch

  TempDir tmp;
  for (int i = 0; i < 3; i++) write_bytes(tmp / ("d/c/bad" + std::to_string(i) + ".jpg"), {'x'});
  ImageOptions opt;
  opt.image_size = 8;
  opt.resize_size = 8;
  opt.bad_images = BadImages::skip;
  auto folder = open_image_folder(tmp / "d", opt);
  Loader loader(*folder, 2, true, 0, 1);
  loader.start_epoch(0);
  CHECK(error_of([&] { loader.next(); }) ==
        "ImageFolder " + tmp / "d" + ": all 2 images of the epoch were bad and skipped (--bad-images skip)");
}

TEST_CASE("FIFOs as a CIFAR batch, an image or a synsets file are refused at once, not read forever") {
  TempDir tmp;
  write_cifar_dir(tmp / "c", 2);
  fs::remove(tmp.path / "c/test_batch.bin");
  CHECK(error_reading_fifo(tmp.path / "c/test_batch.bin", [&] { open_cifar10(tmp / "c", false); }) ==
        "CIFAR-10 " + tmp / "c/test_batch.bin" + ": not a regular file");
  Image img;
  CHECK(error_reading_fifo(tmp.path / "fifo.jpg", [&] { decode_image(tmp / "fifo.jpg", img); }) ==
        tmp / "fifo.jpg" + ": not a regular file");
  write_jpg(tmp / "f/n01/a.jpg", 8, 8);
  ImageOptions opt;
  opt.synsets = tmp / "synsets.txt";
  CHECK(error_reading_fifo(opt.synsets, [&] { open_image_folder(tmp / "f", opt); }) ==
        "synsets file " + opt.synsets + ": missing or not a regular file");
}
