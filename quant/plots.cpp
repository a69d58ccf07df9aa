#include "quant/plots.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>

#define STB_IMAGE_WRITE_IMPLEMENTATION
#define STB_IMAGE_WRITE_STATIC
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#pragma GCC diagnostic ignored "-Wunused-function"
#include <stb_image_write.h>
#pragma GCC diagnostic pop

namespace quant {

void write_histogram_png(const std::string& path, const std::vector<float>& values, int bins, int width, int height) {
  float range = 0;
  for (float v : values) range = std::max(range, std::fabs(v));
  if (range == 0) range = 1;
  std::vector<int64_t> count(bins, 0);
  for (float v : values) count[std::clamp((int)((v + range) / (2 * range) * bins), 0, bins - 1)]++;
  const double top = std::log1p((double)*std::max_element(count.begin(), count.end()));
  std::vector<uint8_t> px((size_t)width * height * 3, 255);
  auto set = [&](int x, int y, uint8_t r, uint8_t g, uint8_t b) {
    uint8_t* p = &px[((size_t)y * width + x) * 3];
    p[0] = r, p[1] = g, p[2] = b;
  };
  for (int x = 0; x < width; x++) {
    const int bin = std::min(x * bins / width, bins - 1);
    const int h = top > 0 ? (int)std::lround(std::log1p((double)count[bin]) / top * (height - 1)) : 0;
    for (int y = height - h; y < height; y++) set(x, y, 40, 70, 160);
  }
  for (int y = 0; y < height; y += 2) set(width / 2, y, 200, 60, 60);  // w = 0, dotted
  if (!stbi_write_png(path.c_str(), width, height, 3, px.data(), width * 3))
    throw std::runtime_error("cannot write " + path);
}

void write_bars_png(const std::string& path, const std::vector<std::vector<Bar>>& panels, int bar_width, int panel_height) {
  double lo = INFINITY, hi = 0;
  size_t bars = 1;
  for (const auto& p : panels) {
    bars = std::max(bars, p.size());
    for (const Bar& b : p)
      if (b.value > 0 && std::isfinite(b.value)) lo = std::min(lo, b.value), hi = std::max(hi, b.value);
  }
  const int width = (int)bars * bar_width, height = std::max<int>(1, (int)panels.size()) * panel_height;
  std::vector<uint8_t> px((size_t)width * height * 3, 255);
  auto set = [&](int x, int y, uint8_t r, uint8_t g, uint8_t b) {
    uint8_t* p = &px[((size_t)y * width + x) * 3];
    p[0] = r, p[1] = g, p[2] = b;
  };
  // log scale from a decade under the smallest value to the largest
  const double bottom = hi > 0 ? std::log10(lo) - 1 : 0, span = hi > 0 ? std::log10(hi) - bottom : 1;
  for (size_t k = 0; k < panels.size(); k++) {
    const int base = (int)(k + 1) * panel_height - 1;
    for (int x = 0; x < width; x++) set(x, base, 150, 150, 150);
    for (size_t i = 0; i < panels[k].size(); i++) {
      const Bar& b = panels[k][i];
      if (!(b.value > 0) || !std::isfinite(b.value)) continue;
      const int h = (int)std::lround((std::log10(b.value) - bottom) / span * (panel_height - 8));
      for (int y = base - 1; y > base - 1 - h && y >= 0; y--)
        for (int x = (int)i * bar_width + 1; x < (int)(i + 1) * bar_width - 1; x++)
          b.marked ? set(x, y, 230, 130, 30) : set(x, y, 40, 70, 160);
    }
  }
  if (!stbi_write_png(path.c_str(), width, height, 3, px.data(), width * 3))
    throw std::runtime_error("cannot write " + path);
}

}  // namespace quant
