#include "datasets/decode.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <csetjmp>
#include <cstdio>  // jpeglib.h uses FILE and size_t without including them
#include <cstring>
#include <stdexcept>

#include <jpeglib.h>
#include <jerror.h>
#include <png.h>

// Both libraries report an error by calling a function that must not return; ours longjmp back to the
// setjmp in jpeg_decode and png_decode. A longjmp skips destructors, so those two functions and the
// callbacks hold no object with one: the library state lives in Jpeg and Png, owned by the caller, whose
// destructors free it, and the message is copied into a char array there.

namespace data {
namespace {

std::runtime_error bad(const std::string& path, const std::string& problem) {
  return std::runtime_error(path + ": " + problem);
}

std::runtime_error too_many_pixels(const std::string& path, int64_t w, int64_t h, int64_t max_pixels) {
  return bad(path, std::to_string(w) + " x " + std::to_string(h) + " pixels, more than the limit of " +
                       std::to_string(max_pixels) + " (ImageOptions::max_pixels, ./train --max-image-pixels)");
}

enum class Decoded { ok, too_large, failed };

// --- JPEG: libjpeg-turbo ------------------------------------------------------------------------------

struct Jpeg {
  jpeg_decompress_struct cinfo{};  // zeroed: jpeg_destroy_decompress is then a no-op before creation
  jpeg_error_mgr errors{};
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX] = "";
  ~Jpeg() { jpeg_destroy_decompress(&cinfo); }
};

// libjpeg's error_exit. Its default prints the message and exits the process.
[[noreturn]] void jpeg_fail(j_common_ptr c) {
  Jpeg& j = *static_cast<Jpeg*>(c->client_data);
  c->err->format_message(c, j.message);
  std::longjmp(j.jump, 1);
}

// Warnings (level -1) are corrupt data that libjpeg decodes past: a file cut short comes out grey below the
// cut ("Premature end of JPEG file"), a damaged scan as garbage ("bad Huffman code"). They are errors here,
// as stb_image's were, except these three, which leave the pixels whole: bytes between two segments (in
// a few ImageNet training files, after the last scan), an unknown JFIF version, a bad ICC profile, which
// is not read.
bool harmless_jpeg_warning(int code) {
  return code == JWRN_EXTRANEOUS_DATA || code == JWRN_JFIF_MAJOR || code == JWRN_BOGUS_ICC;
}

// libjpeg's emit_message, which prints the warnings and trace messages by default; those print nothing.
void jpeg_message(j_common_ptr c, int level) {
  if (level < 0 && !harmless_jpeg_warning(c->err->msg_code)) jpeg_fail(c);
}

// Reads the header, checks the pixel bound, then decodes into img.pixels: RGB, or CMYK for a CMYK or YCCK
// file (libjpeg converts YCCK to CMYK, not to RGB). No scaling, libjpeg's default IDCT (JDCT_ISLOW) and
// upsampling (fancy), as PIL's. On `failed` the reason is in j.message.
Decoded jpeg_decode(Jpeg& j, const std::vector<uint8_t>& file, int64_t max_pixels, Image& img) {
  jpeg_decompress_struct& c = j.cinfo;
  c.err = jpeg_std_error(&j.errors);
  j.errors.error_exit = jpeg_fail;
  j.errors.emit_message = jpeg_message;
  c.client_data = &j;
  if (setjmp(j.jump)) return Decoded::failed;
  jpeg_create_decompress(&c);
  jpeg_mem_src(&c, file.data(), file.size());
  jpeg_read_header(&c, TRUE);
  if (int64_t(c.image_width) * c.image_height > max_pixels) return Decoded::too_large;
  c.out_color_space = c.jpeg_color_space == JCS_CMYK || c.jpeg_color_space == JCS_YCCK ? JCS_CMYK : JCS_RGB;
  jpeg_start_decompress(&c);  // a progressive file is read whole here
  const size_t stride = size_t(c.output_width) * c.output_components;
  img.pixels.resize(stride * c.output_height);
  while (c.output_scanline < c.output_height) {
    JSAMPROW row = img.pixels.data() + stride * c.output_scanline;
    jpeg_read_scanlines(&c, &row, 1);
  }
  jpeg_finish_decompress(&c);  // reads on to the end-of-image marker, so a file cut after its last scan fails
  return Decoded::ok;
}

// libjpeg's CMYK of a CMYK or YCCK file, stored inverted as Adobe's encoders write it (255: no ink), to
// RGB in place: R = C * K / 255 rounded, likewise G from M and B from Y. stb_image's formula; PIL's
// differs from it by at most 1.
void cmyk_to_rgb(std::vector<uint8_t>& px) {
  const size_t n = px.size() / 4;
  for (size_t i = 0; i < n; i++) {  // writes 3i..3i+2, at or before the bytes read, 4i..4i+3
    const unsigned k = px[4 * i + 3];
    for (size_t c = 0; c < 3; c++) {
      const unsigned t = px[4 * i + c] * k + 128;
      px[3 * i + c] = uint8_t((t + (t >> 8)) >> 8);
    }
  }
  px.resize(3 * n);
}

void decode_jpeg(const std::string& path, const std::vector<uint8_t>& file, int64_t max_pixels, Image& img) {
  Jpeg j;
  switch (jpeg_decode(j, file, max_pixels, img)) {
    case Decoded::failed: throw bad(path, std::string("corrupt or truncated image (libjpeg: ") + j.message + ")");
    case Decoded::too_large: throw too_many_pixels(path, j.cinfo.image_width, j.cinfo.image_height, max_pixels);
    case Decoded::ok: break;
  }
  if (j.cinfo.out_color_space == JCS_CMYK) cmyk_to_rgb(img.pixels);
  img.w = int(j.cinfo.output_width);
  img.h = int(j.cinfo.output_height);
  img.channels_in_file = j.cinfo.num_components >= 3 ? 3 : 1;  // as stb_image: CMYK and YCCK count as 3
}

// --- PNG: libpng --------------------------------------------------------------------------------------

struct Png {
  png_structp png = nullptr;
  png_infop info = nullptr;
  std::jmp_buf jump;
  char message[256] = "";
  const uint8_t* next = nullptr;  // the file's unread bytes
  size_t left = 0;
  int channels_in_file = 0;
  ~Png() {
    if (png) png_destroy_read_struct(&png, info ? &info : nullptr, nullptr);
  }
};

// libpng's error function. Its default prints the message.
[[noreturn]] void png_fail(png_structp png, png_const_charp message) {
  Png& p = *static_cast<Png*>(png_get_error_ptr(png));
  std::snprintf(p.message, sizeof p.message, "%s", message);
  std::longjmp(p.jump, 1);
}

// libpng warns about ancillary chunks (a bad CRC, a bad colour profile, text), which it then skips: none of
// them changes the pixels. A bad CRC in IHDR, PLTE or IDAT, and every problem with the image data, are
// errors.
void png_ignore_warning(png_structp, png_const_charp) {}

void png_read_memory(png_structp png, png_bytep out, size_t n) {
  Png& p = *static_cast<Png*>(png_get_io_ptr(png));
  if (n > p.left) png_error(png, "the file ends early");
  std::memcpy(out, p.next, n);
  p.next += n;
  p.left -= n;
}

// Reads the header, checks the pixel bound, then decodes into img.pixels as RGB: palette expanded, grey
// replicated, 1-4 bit grey scaled to 8 bits, 16-bit samples cut to their high byte, alpha and transparency
// dropped, no gamma. On `failed` the reason is in p.message.
Decoded png_decode(Png& p, const std::vector<uint8_t>& file, int64_t max_pixels, Image& img) {
  if (setjmp(p.jump)) return Decoded::failed;
  p.png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &p, png_fail, png_ignore_warning);
  if (!p.png || !(p.info = png_create_info_struct(p.png))) {
    std::snprintf(p.message, sizeof p.message, "out of memory");
    return Decoded::failed;
  }
  p.next = file.data();
  p.left = file.size();
  png_set_read_fn(p.png, &p, png_read_memory);
  png_set_user_limits(p.png, PNG_UINT_31_MAX, PNG_UINT_31_MAX);  // not 1,000,000 x 1,000,000: max_pixels bounds
  png_read_info(p.png, p.info);
  const size_t w = png_get_image_width(p.png, p.info), h = png_get_image_height(p.png, p.info);
  if (int64_t(w) * int64_t(h) > max_pixels) return Decoded::too_large;
  // Counted as stb_image counts them: a palette as RGB, RGBA when it has transparent entries.
  const int type = png_get_color_type(p.png, p.info);
  const bool alpha = (type & PNG_COLOR_MASK_ALPHA) ||
                     (type == PNG_COLOR_TYPE_PALETTE && png_get_valid(p.png, p.info, PNG_INFO_tRNS));
  p.channels_in_file = (type & PNG_COLOR_MASK_COLOR ? 3 : 1) + (alpha ? 1 : 0);
  png_set_strip_16(p.png);
  png_set_palette_to_rgb(p.png);
  png_set_expand_gray_1_2_4_to_8(p.png);
  png_set_gray_to_rgb(p.png);
  png_set_strip_alpha(p.png);
  const int passes = png_set_interlace_handling(p.png);
  png_read_update_info(p.png, p.info);
  if (png_get_rowbytes(p.png, p.info) != 3 * w) png_error(p.png, "not converted to 8-bit RGB");
  img.pixels.resize(3 * w * h);
  for (int pass = 0; pass < passes; pass++)  // an interlaced file fills every row once a pass
    for (size_t y = 0; y < h; y++) png_read_row(p.png, img.pixels.data() + 3 * w * y, nullptr);
  png_read_end(p.png, nullptr);  // reads on to IEND, so a file cut after its image data fails
  return Decoded::ok;
}

void decode_png(const std::string& path, const std::vector<uint8_t>& file, int64_t max_pixels, Image& img) {
  Png p;
  switch (png_decode(p, file, max_pixels, img)) {
    case Decoded::failed: throw bad(path, std::string("corrupt or truncated image (libpng: ") + p.message + ")");
    case Decoded::too_large:
      throw too_many_pixels(path, png_get_image_width(p.png, p.info), png_get_image_height(p.png, p.info), max_pixels);
    case Decoded::ok: break;
  }
  img.w = int(png_get_image_width(p.png, p.info));
  img.h = int(png_get_image_height(p.png, p.info));
  img.channels_in_file = p.channels_in_file;
}

}  // namespace

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
  // Bounds the read buffer: no JPEG or PNG within the pixel limit needs as much (64 Mpx of 16-bit RGBA
  // stored uncompressed is 512 MB).
  if (sb.st_size > INT32_MAX) {
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

  // By content, not by name: a JPEG starts with its SOI marker, a PNG with its 8-byte signature.
  if (buf.size() >= 2 && buf[0] == 0xFF && buf[1] == 0xD8)
    decode_jpeg(path, buf, max_pixels, img);
  else if (buf.size() >= 8 && png_sig_cmp(buf.data(), 0, 8) == 0)
    decode_png(path, buf, max_pixels, img);
  else
    throw bad(path, "not a JPEG or PNG file");
}

}  // namespace data
