#include "datasets/transforms.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <stdexcept>
#include <vector>

namespace data {

CifarAugment cifar_augment_params(Rng& rng) {
  CifarAugment a;
  a.crop.top = int(rng.below(9));  // torchvision randint(0, 40 - 32 + 1)
  a.crop.left = int(rng.below(9));
  a.crop.height = a.crop.width = 32;
  a.flip = rng.uniform() < 0.5;
  return a;
}

void cifar_transform(const uint8_t* planes, const CifarAugment* aug, const Normalize& norm, float* chw) {
  constexpr int S = 32, P = 4;
  // Offset of the crop in the unpadded image; the padding is pixel value 0.
  int dy = aug ? aug->crop.top - P : 0, dx = aug ? aug->crop.left - P : 0;
  bool flip = aug && aug->flip;
  for (int c = 0; c < 3; c++) {
    float lut[256];
    for (int v = 0; v < 256; v++) lut[v] = (v / 255.f - norm.mean[c]) / norm.std[c];
    const uint8_t* src = planes + c * S * S;
    for (int y = 0; y < S; y++) {
      float* out = chw + (c * S + y) * S;
      int sy = y + dy;
      if (sy < 0 || sy >= S) {
        std::fill(out, out + S, lut[0]);
        continue;
      }
      for (int x = 0; x < S; x++) {
        int sx = (flip ? S - 1 - x : x) + dx;
        out[x] = sx >= 0 && sx < S ? lut[src[sy * S + sx]] : lut[0];
      }
    }
  }
}

// Python's int(round(x)): halves go to the even neighbour, as nearbyint does in the default rounding mode.
static int round_half_even(double x) { return int(std::nearbyint(x)); }

Box random_resized_crop_box(int h, int w, Rng& rng, double scale_lo, double scale_hi, double ratio_lo,
                            double ratio_hi) {
  double area = double(h) * w;
  double log_lo = std::log(ratio_lo), log_hi = std::log(ratio_hi);
  for (int attempt = 0; attempt < 10; attempt++) {
    double target_area = area * rng.uniform(scale_lo, scale_hi);
    double aspect = std::exp(rng.uniform(log_lo, log_hi));
    int cw = round_half_even(std::sqrt(target_area * aspect));
    int ch = round_half_even(std::sqrt(target_area / aspect));
    if (0 < cw && cw <= w && 0 < ch && ch <= h) {
      int top = int(rng.below(uint64_t(h - ch + 1)));
      int left = int(rng.below(uint64_t(w - cw + 1)));
      return {top, left, ch, cw};
    }
  }
  // Fallback: a center crop of the whole image, its aspect ratio clamped to [ratio_lo, ratio_hi].
  double in_ratio = double(w) / h;
  int cw = w, ch = h;
  if (in_ratio < ratio_lo)
    ch = round_half_even(w / ratio_lo);
  else if (in_ratio > ratio_hi)
    cw = round_half_even(h * ratio_hi);
  return {(h - ch) / 2, (w - cw) / 2, ch, cw};
}

bool resize_shorter_dims(int h, int w, int size, int& out_h, int& out_w) {
  if (h <= 0 || w <= 0) return false;
  const double longer = w <= h ? double(size) * h / w : double(size) * w / h;  // exact below 2^53
  if (longer > double(INT_MAX)) return false;
  out_h = w <= h ? int(longer) : size;
  out_w = w <= h ? size : int(longer);
  return true;
}

Box center_crop_box(int h, int w, int size) {
  return {round_half_even((h - size) / 2.0), round_half_even((w - size) / 2.0), size, size};
}

namespace {

// Filter taps of one axis of an in_size -> out_size resize, for the outputs o0 .. o0 + n - 1 (PIL's
// precompute_coeffs with the triangle filter): output o reads inputs first[o] .. first[o] + count[o] - 1
// with the weights w[o * k ..], which sum to 1.
struct Taps {
  std::vector<int> first, count;
  std::vector<float> w;
  std::vector<double> scratch;
  int k = 0;
};

void make_taps(int in_size, int out_size, int o0, int n, Taps& t) {
  double scale = double(in_size) / out_size;
  double filter_scale = std::max(scale, 1.0);
  double support = filter_scale;  // the triangle filter's support 1, stretched when downscaling
  t.k = int(std::ceil(support)) * 2 + 1;
  t.first.resize(n);
  t.count.resize(n);
  t.w.assign(size_t(n) * t.k, 0.f);
  t.scratch.resize(t.k);
  double* ww = t.scratch.data();
  for (int i = 0; i < n; i++) {
    double center = (o0 + i + 0.5) * scale;
    int lo = std::max(int(center - support + 0.5), 0);
    int hi = std::min(int(center + support + 0.5), in_size);
    double sum = 0;
    for (int x = lo; x < hi; x++) {
      double d = std::abs((x - center + 0.5) / filter_scale);
      ww[x - lo] = d < 1 ? 1 - d : 0;
      sum += ww[x - lo];
    }
    for (int x = lo; x < hi; x++) t.w[size_t(i) * t.k + (x - lo)] = float(sum != 0 ? ww[x - lo] / sum : 0);
    t.first[i] = lo;
    t.count[i] = hi - lo;
  }
}

}  // namespace

void resize_crop(const uint8_t* hwc, int h, int w, Box src, int out_h, int out_w, Box window, bool flip,
                 const Normalize& norm, float* chw) {
  if (src.top < 0 || src.left < 0 || src.height <= 0 || src.width <= 0 || src.top + src.height > h ||
      src.left + src.width > w || window.top < 0 || window.left < 0 || window.height <= 0 ||
      window.width <= 0 || window.top + window.height > out_h || window.left + window.width > out_w)
    throw std::invalid_argument(
        "resize_crop: the source box must lie in the image and the window in the output");
  thread_local Taps tx, ty;
  thread_local std::vector<float> tmp, acc;
  const int oh = window.height, ow = window.width;
  make_taps(src.width, out_w, window.left, ow, tx);
  make_taps(src.height, out_h, window.top, oh, ty);

  // Horizontal pass over the source rows the window needs: tmp is (y1 - y0) x ow x 3.
  const int y0 = ty.first[0], y1 = ty.first[oh - 1] + ty.count[oh - 1];
  tmp.resize(size_t(y1 - y0) * ow * 3);
  for (int y = y0; y < y1; y++) {
    const uint8_t* row = hwc + (size_t(src.top + y) * w + src.left) * 3;
    float* out = tmp.data() + size_t(y - y0) * ow * 3;
    for (int x = 0; x < ow; x++) {
      const float* k = &tx.w[size_t(x) * tx.k];
      const uint8_t* p = row + tx.first[x] * 3;
      float r = 0, g = 0, b = 0;
      for (int j = 0; j < tx.count[x]; j++) {
        r += k[j] * p[3 * j];
        g += k[j] * p[3 * j + 1];
        b += k[j] * p[3 * j + 2];
      }
      out[3 * x] = r;
      out[3 * x + 1] = g;
      out[3 * x + 2] = b;
    }
  }

  // Vertical pass, then flip and normalize into CHW.
  acc.resize(size_t(ow) * 3);
  const size_t plane = size_t(oh) * ow;
  for (int y = 0; y < oh; y++) {
    std::fill(acc.begin(), acc.end(), 0.f);
    for (int j = 0; j < ty.count[y]; j++) {
      float k = ty.w[size_t(y) * ty.k + j];
      const float* r = tmp.data() + size_t(ty.first[y] + j - y0) * ow * 3;
      for (int i = 0; i < ow * 3; i++) acc[i] += k * r[i];
    }
    for (int c = 0; c < 3; c++) {
      float* out = chw + c * plane + size_t(y) * ow;
      for (int x = 0; x < ow; x++)
        out[flip ? ow - 1 - x : x] = (acc[3 * x + c] / 255.f - norm.mean[c]) / norm.std[c];
    }
  }
}

}  // namespace data
