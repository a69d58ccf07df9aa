#include "datasets/decode.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
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

// False for a JPEG with a Huffman table of more than 256 codes. stb_image (Debian's 2022-09 version) does
// not check it and writes past its 257-entry tables (found by fuzz/image_fuzz.cpp; upstream checks it since
// 2.28). Walks the marker segments, stepping over entropy-coded data, which ends at a marker other than
// 0xFF00 and the restarts 0xFFD0-D7. Anything else it leaves to stb_image.
static bool jpeg_huffman_tables_fit(const std::vector<uint8_t>& b) {
  const size_t n = b.size();
  size_t i = 1;
  if (n < 2 || b[0] != 0xFF) return true;  // not a JPEG
  while (i < n && b[i] == 0xFF) i++;        // stb_image takes fill bytes before every marker, the first too
  if (i == n || b[i] != 0xD8) return true;  // not a JPEG
  i++;
  while (i + 1 < n) {
    if (b[i] != 0xFF) {  // entropy-coded data
      i++;
      continue;
    }
    const uint8_t m = b[i + 1];
    if (m == 0xFF || m == 0x00 || (m >= 0xD0 && m <= 0xD7) || m == 0x01 || m == 0xD8) {
      i += m == 0xFF ? 1 : 2;  // fill byte, stuffed zero, restart: no length
      continue;
    }
    if (m == 0xD9 || i + 3 >= n) return true;  // end of image
    const size_t len = size_t(b[i + 2]) << 8 | b[i + 3], end = std::min(n, i + 2 + len);
    if (m == 0xC4)  // DHT: tables of (class and id, 16 code counts, the codes); stb_image reads 0 past the end
      for (size_t t = i + 4; t < end;) {
        size_t codes = 0;
        for (size_t k = t + 1; k <= t + 16 && k < n; k++) codes += b[k];
        if (codes > 256) return false;
        t += 17 + codes;
      }
    i += 2 + len;
  }
  return true;
}

// False for a PNG whose first IDAT chunk is empty: stb_image (the same version) then copies 0 bytes into
// its not yet allocated buffer, memcpy(NULL, ..., 0), undefined behaviour (found by fuzz/image_fuzz.cpp).
// Such a file is legal but no encoder writes one; it is refused. Walks the chunks (length, type, data,
// CRC) as stb_image does, without checking the CRCs, which it ignores.
static bool png_first_idat_nonempty(const std::vector<uint8_t>& b) {
  static const uint8_t signature[8] = {0x89, 'P', 'N', 'G', 0x0D, 0x0A, 0x1A, 0x0A};
  if (b.size() < 8 || !std::equal(signature, signature + 8, b.begin())) return true;  // not a PNG
  for (size_t i = 8; i + 8 <= b.size();) {
    const size_t len = size_t(b[i]) << 24 | size_t(b[i + 1]) << 16 | size_t(b[i + 2]) << 8 | b[i + 3];
    if (std::equal(b.begin() + i + 4, b.begin() + i + 8, "IDAT")) return len > 0;  // the first IDAT decides
    i += 12 + len;
  }
  return true;
}

void decode_image(const std::string& path, Image& img, int64_t max_pixels) {
  thread_local std::vector<uint8_t> buf;
  // O_NONBLOCK: open() of a FIFO returns at once, and fstat refuses it.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) throw bad(path, "cannot open the image file");
  struct stat sb;
  if (::fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
    ::close(fd);
    throw bad(path, "not a regular file");
  }
  if (sb.st_size > INT32_MAX) {  // stb_image takes an int length
    ::close(fd);
    throw bad(path, "larger than 2 GB");
  }
  buf.resize(size_t(sb.st_size));
  size_t got = 0;
  while (got < buf.size()) {
    const ssize_t r = ::read(fd, buf.data() + got, buf.size() - got);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    got += size_t(r);
  }
  ::close(fd);
  if (got != buf.size()) throw bad(path, "read error");
  if (buf.empty()) throw bad(path, "empty image file");

  if (!jpeg_huffman_tables_fit(buf)) throw bad(path, "corrupt JPEG (a Huffman table of more than 256 codes)");
  if (!png_first_idat_nonempty(buf)) throw bad(path, "corrupt PNG (its first IDAT chunk is empty)");

  int iw = 0, ih = 0, ic = 0;
  if (stbi_info_from_memory(buf.data(), int(buf.size()), &iw, &ih, &ic) && int64_t(iw) * ih > max_pixels)
    throw bad(path, std::to_string(iw) + " x " + std::to_string(ih) + " pixels, more than the limit of " +
                        std::to_string(max_pixels) + " (ImageOptions::max_pixels, ./train --max-image-pixels)");

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
