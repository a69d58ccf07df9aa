// The fuzz targets' seeds (fuzz/corpus/<target>/) and the inputs they once failed on
// (fuzz/regressions/<target>/), replayed through the targets' bodies (fuzz/targets.h), without clang.
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <utility>
#include <vector>

#include "fuzz/targets.h"
#include "tests/testing.h"

namespace fs = std::filesystem;

namespace {

using Target = std::string (*)(const uint8_t*, size_t);

// Every file of dir/<name>, sorted; none when the folder is absent.
std::vector<fs::path> inputs(const std::string& dir, const std::string& name) {
  std::vector<fs::path> out;
  if (fs::is_directory(dir + "/" + name))
    for (auto& e : fs::directory_iterator(dir + "/" + name)) out.push_back(e.path());
  std::sort(out.begin(), out.end());
  return out;
}

std::string run(Target t, const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  const std::string bytes(std::istreambuf_iterator<char>(in), {});
  return t(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
}

void replay(const std::string& name, Target t) {
  const std::vector<fs::path> seeds = inputs("fuzz/corpus", name);
  CHECK(seeds.size() >= 2);
  for (auto& p : seeds) CHECK_MESSAGE(run(t, p) == "", p.string());
  for (auto& p : inputs("fuzz/regressions", name)) CHECK_MESSAGE(run(t, p) == "", p.string());
}

const bool have_corpus = have_path("fuzz/corpus");

}  // namespace

TEST_CASE("fuzz: safetensors seeds and regressions" * skip_unless(have_corpus, "fuzz corpus: run from the repository root")) {
  replay("safetensors", fuzz::safetensors);
}
TEST_CASE("fuzz: checkpoint seeds and regressions" * skip_unless(have_corpus, "fuzz corpus: run from the repository root")) {
  replay("checkpoint", fuzz::checkpoint);
}
TEST_CASE("fuzz: int8 export loader seeds and regressions" * skip_unless(have_corpus, "fuzz corpus: run from the repository root")) {
  replay("int8", fuzz::int8);
}
TEST_CASE("fuzz: CIFAR-10 seeds and regressions" * skip_unless(have_corpus, "fuzz corpus: run from the repository root")) {
  replay("cifar", fuzz::cifar);
}
TEST_CASE("fuzz: image seeds and regressions" * skip_unless(have_corpus, "fuzz corpus: run from the repository root")) {
  replay("image", fuzz::image);
}

TEST_CASE("fuzz: a target reports a refusal that does not name the file, and one that echoes its input") {
  CHECK(fuzz::check_message("file /tmp/x: bad", "/tmp/x") == "");
  CHECK(fuzz::check_message("bad header", "/tmp/x").find("does not name the file") != std::string::npos);
  CHECK(fuzz::check_message("/tmp/x: " + std::string(5000, 'a'), "/tmp/x").find("5008 characters") != std::string::npos);
  CHECK(fuzz::refused_clearly("/tmp/x", [] { throw std::out_of_range("map::at"); }).find("not a std::runtime_error") == 0);
}

TEST_CASE("fuzz regression: the inputs that made stb_image overflow, shift too far or copy into a null buffer are refused by libjpeg and libpng" *
          skip_unless(have_corpus, "fuzz corpus: run from the repository root")) {
  // What each one is and what stb_image did with it: docs/hardening.md.
  const std::vector<std::pair<std::string, std::string>> refused = {
      {"jpeg-dht-over-256-codes.jpg", "corrupt or truncated image (libjpeg: Bogus Huffman table definition)"},
      {"jpeg-dht-cut-off.jpg", "corrupt or truncated image (libjpeg: Premature end of JPEG file)"},
      {"jpeg-fill-bytes-before-soi.jpg", "not a JPEG or PNG file"},  // starts FF FF D8, not with the SOI marker
      {"jpeg-entropy-shift-34.jpg", "corrupt or truncated image (libjpeg: Corrupt JPEG data: premature end of data segment)"},
      {"png-empty-first-idat.png", "corrupt or truncated image (libpng: IDAT: CRC error)"},  // stb_image ignored CRCs
  };
  for (const auto& [name, problem] : refused) {
    const std::string p = "fuzz/regressions/image/" + name;
    data::Image img;
    CHECK_THROWS_WITH_AS(data::decode_image(p, img), (p + ": " + problem).c_str(), std::runtime_error);
  }
  CHECK(inputs("fuzz/regressions", "image").size() == refused.size());
}
