#include "datasets/decode.h"

#include <cstdio>
#include <stdexcept>
#include <vector>

#define STB_IMAGE_IMPLEMENTATION
#define STBI_ONLY_JPEG
#define STBI_ONLY_PNG
#include <stb_image.h>

namespace data {

void StbFree::operator()(uint8_t* p) const { stbi_image_free(p); }

static std::runtime_error bad(const std::string& path, const std::string& problem) {
  return std::runtime_error(path + ": " + problem);
}

void decode_image(const std::string& path, Image& img) {
  thread_local std::vector<uint8_t> buf;
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) throw bad(path, "cannot open the image file");
  std::fseek(f, 0, SEEK_END);
  long size = std::ftell(f);
  std::fseek(f, 0, SEEK_SET);
  buf.resize(size > 0 ? size_t(size) : 0);
  size_t got = size > 0 ? std::fread(buf.data(), 1, buf.size(), f) : 0;
  std::fclose(f);
  if (size < 0 || got != buf.size()) throw bad(path, "read error");
  if (buf.empty()) throw bad(path, "empty image file");

  int w = 0, h = 0, channels = 0;
  uint8_t* pixels = stbi_load_from_memory(buf.data(), int(buf.size()), &w, &h, &channels, 3);
  if (!pixels) {
    // stb_image reads a JPEG up to its end-of-image marker and a PNG up to IEND, so a cut file fails here.
    std::string reason = stbi_failure_reason();
    throw bad(path,
              (reason == "unknown image type" ? "not a JPEG or PNG file" : "corrupt or truncated image") +
                  std::string(" (stb_image: ") + reason + ")");
  }
  img.pixels.reset(pixels);
  img.h = h;
  img.w = w;
  img.channels_in_file = channels;
}

}  // namespace data
