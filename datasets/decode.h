// Image file decoding: JPEG with libjpeg-turbo, PNG with libpng, told apart by content, to HWC uint8 RGB.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace data {

// The default bound on an image's pixels (width x height), checked from its header before decoding: a
// small file can declare 26000 x 26000 pixels (2 GB decoded). 64 megapixels.
inline constexpr int64_t kMaxImagePixels = int64_t(1) << 26;

struct Image {
  std::vector<uint8_t> pixels;  // h x w x 3, RGB; a reused Image keeps its allocation
  int h = 0, w = 0;
  int channels_in_file = 0;  // 1 grey, 2 grey + alpha, 3 RGB (or a JPEG's CMYK/YCCK), 4 RGBA
};

// Decodes the file at path into img: greyscale is replicated to RGB; alpha (a PNG's alpha channel or
// transparent palette entries) is dropped, not composited; 16-bit PNG samples keep their high byte; a
// JPEG's CMYK or YCCK is converted to RGB; gamma and colour profiles are ignored. These are stb_image's
// and PIL's (torchvision's) conversions. Throws std::runtime_error "<path>: <problem>" when the file is
// missing, not a regular file, empty, not a JPEG or PNG, corrupt or truncated (for a JPEG also the data
// errors libjpeg only warns about), or declares more than max_pixels pixels.
void decode_image(const std::string& path, Image& img, int64_t max_pixels = kMaxImagePixels);

}  // namespace data
