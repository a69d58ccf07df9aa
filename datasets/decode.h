// Image file decoding with stb_image: JPEG or PNG, told apart by content, to HWC uint8 RGB.
#pragma once
#include <cstdint>
#include <memory>
#include <string>

namespace data {

struct StbFree {
  void operator()(uint8_t* p) const;
};

struct Image {
  std::unique_ptr<uint8_t, StbFree> pixels;  // h x w x 3, RGB
  int h = 0, w = 0;
  int channels_in_file = 0;  // 1 grey, 2 grey + alpha, 3 RGB, 4 RGBA
};

// Decodes the file at path into img; greyscale is replicated to RGB, alpha dropped. Throws
// std::runtime_error "<path>: <problem>" when the file is missing, empty, not an image, corrupt or truncated.
void decode_image(const std::string& path, Image& img);

}  // namespace data
