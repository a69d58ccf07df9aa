#include "datasets/decode.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

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
