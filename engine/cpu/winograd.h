// Winograd convolution (Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks", CVPR 2016) for
// 3x3 stride-1 convolutions with padding 1 in the nChw8c layout: the convolutions of RepVGG, ACNet and
// ResNet blocks on CPUs where oneDNN has no Winograd of its own (AVX2: its jit_wino_4x3 is AVX-512 only).
// F(4x4, 3x3) costs 36 multiplications per channel pair for 16 outputs, F(2x2, 3x3) 16 for 4, against 144
// and 36 directly, in the forward convolution, the backward-data one and the weight gradient alike. The
// results differ from the direct convolution's by float32 rounding: F(2x2)'s transforms have the
// coefficients 0, ±1 and ½; F(4x4)'s reach 8 and 1/24, and its errors are a few times larger (as oneDNN's
// F(4x4) on AVX-512 CPUs).
#pragma once
#include "engine/kernels.h"

namespace engine::cpu {

// Whether this build has these kernels: AVX2 and FMA in its -march (the sanitizer build has neither).
bool winograd_available();

// Whether these kernels take s: a 3x3 kernel, stride 1, padding 1 each way, no groups, x and y in nChw8c
// (C and O multiples of 8), in a build that has them.
bool winograd_fits(const ConvShape& s);

// The output tile: 4x4 where the plane has more than 4 pixels each way, else 2x2 (at 4x4 both cost the same
// forward and F(2x2) less in the weight gradient, dev/winograd.cpp; a 2x2 plane wastes 3/4 of a 4x4 tile); each only while its transformed kernels fit the L3 cache (winograd.cpp kKernelBytes);
// none beyond (oneDNN's direct kernel is faster there).
enum class WinogradTile { none, f2, f4 };
WinogradTile winograd_tile(const ConvShape& s);

// y [N, O, H, W] = x [N, C, H, W] convolved with w [O, C, 3, 3], plus b [O] when s.bias (b may be null
// otherwise), then max(0, ·) where relu (NaN stays NaN). x and y in nChw8c, w in OIHW. With frozen_w (w's
// storage, frozen), w's transformed kernels are made once and kept there (frozen.h).
void winograd_forward(const ConvShape& s, const float* x, const float* w, const float* b, float* y, WinogradTile tile,
                      Storage* frozen_w = nullptr, bool relu = false);

// gx [N, C, H, W] = the transposed convolution of gy [N, O, H, W] with w: for stride 1 and padding 1, the
// convolution of gy with w's kernels flipped and its two channel axes swapped. gy and gx in nChw8c.
void winograd_backward_data(const ConvShape& s, const float* gy, const float* w, float* gx, WinogradTile tile);

// gw [O, C, 3, 3] from x [N, C, H, W] and gy [N, O, H, W] (both nChw8c); gb [O] = gy summed over N, H and W
// when s.bias.
void winograd_backward_weight(const ConvShape& s, const float* x, const float* gy, float* gw, float* gb,
                              WinogradTile tile);

}  // namespace engine::cpu
