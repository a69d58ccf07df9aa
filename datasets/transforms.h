// Image transforms of the input pipelines, as torchvision does them.
// In: HWC uint8 RGB images. Out: CHW float32, normalized per channel: (v / 255 - mean) / std.
#pragma once
#include <cstdint>

#include "datasets/rng.h"

namespace data {

struct Normalize {
  float mean[3], std[3];  // per channel, of values in [0, 1]
};
inline constexpr Normalize kCifar10Norm{{0.4914f, 0.4822f, 0.4465f}, {0.2470f, 0.2435f, 0.2616f}};
inline constexpr Normalize kImageNetNorm{{0.485f, 0.456f, 0.406f}, {0.229f, 0.224f, 0.225f}};
// (v / 255 - 0) / (1 / 255) = v: leaves values in [0, 255], for tests against references.
inline constexpr Normalize kNoNorm{{0, 0, 0}, {1 / 255.f, 1 / 255.f, 1 / 255.f}};

struct Box {
  int top = 0, left = 0, height = 0, width = 0;
};

// CIFAR training augmentation (torchvision RandomCrop(32, padding=4) then RandomHorizontalFlip).
// crop is in the coordinates of the image zero-padded by 4: top, left in [0, 8], 32 x 32.
struct CifarAugment {
  Box crop;
  bool flip;
};
CifarAugment cifar_augment_params(Rng& rng);

// CIFAR image: 3 planes of 32 x 32 bytes (R, G, B) to CHW float32, cropped and flipped by aug when given.
void cifar_transform(const uint8_t* planes, const CifarAugment* aug, const Normalize& norm, float* chw);

// torchvision RandomResizedCrop.get_params: 10 tries of an area fraction uniform in [scale_lo, scale_hi)
// and an aspect ratio w/h log-uniform in [ratio_lo, ratio_hi), else a center crop with the ratio clamped.
Box random_resized_crop_box(int h, int w, Rng& rng, double scale_lo = 0.08, double scale_hi = 1.0,
                            double ratio_lo = 3.0 / 4.0, double ratio_hi = 4.0 / 3.0);

// torchvision Resize(size) of an h x w image: the shorter side becomes size, the longer int(size*long/short).
// False, leaving out_h and out_w alone, when a side is not positive or the longer would not fit in an int
// (a 10,000,000 x 1 image resized to 256).
bool resize_shorter_dims(int h, int w, int size, int& out_h, int& out_w);

// torchvision CenterCrop(size) of an h x w image (h, w >= size).
Box center_crop_box(int h, int w, int size);

// Antialiased bilinear resize (PIL's BILINEAR resize, torchvision antialias=True): the box src of the
// image hwc (h x w x 3) is resized to out_h x out_w with a triangle filter whose support is scaled by the
// downscale factor. Only the part `window` of the resized image is computed; it is written to chw
// (3 x window.height x window.width), mirrored left-right when flip, normalized by norm.
void resize_crop(const uint8_t* hwc, int h, int w, Box src, int out_h, int out_w, Box window, bool flip,
                 const Normalize& norm, float* chw);

}  // namespace data
