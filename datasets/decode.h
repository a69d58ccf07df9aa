// Image file decoding with stb_image: JPEG or PNG, told apart by content, to HWC uint8 RGB.
#pragma once
#include <cstdint>
#include <memory>
#include <string>

namespace data {

// The default bound on an image's pixels (width x height), checked from its header before decoding: a
// small file can declare 26000 x 26000 pixels (2 GB decoded). 64 megapixels.
inline constexpr int64_t kMaxImagePixels = int64_t(1) << 26;

struct StbFree {
  void operator()(uint8_t* p) const;
};

struct Image {
  std::unique_ptr<uint8_t, StbFree> pixels;  // h x w x 3, RGB
  int h = 0, w = 0;
  int channels_in_file = 0;  // 1 grey, 2 grey + alpha, 3 RGB, 4 RGBA
};

// Decodes the file at path into img; greyscale is replicated to RGB, alpha dropped. Throws
// std::runtime_error "<path>: <problem>" when the file is missing, not a regular file, empty, not an
// image, corrupt or truncated, or declares more than max_pixels pixels.
void decode_image(const std::string& path, Image& img, int64_t max_pixels = kMaxImagePixels);

}  // namespace data
