// CPU kernels of the activation layout (ops.h): the conversions between NCHW and the channel-blocked
// nChw{B}c (the block oneDNN's convolutions want is asked in conv.cpp, conv_channel_block).
#include <algorithm>

#include "engine/cpu/channel_block.h"
#include "engine/kernels.h"

namespace engine::cpu {

// x [N, C, HW] <-> y [N, C/B, HW, B]: each plane (n, cb) is a B x HW transpose, in tiles of 64 rows.
template <int B, bool to_blocked>
static void reorder(int64_t n, int64_t c, int64_t hw, const float* src, float* dst) {
#pragma omp parallel for schedule(static) if (n * c * hw > 32768)
  for (int64_t p = 0; p < n * (c / B); p++) {
    const float* from = src + p * B * hw;
    float* to = dst + p * B * hw;
    for (int64_t i0 = 0; i0 < hw; i0 += 64) {
      const int64_t i1 = std::min(hw, i0 + 64);
      for (int j = 0; j < B; j++)
        for (int64_t i = i0; i < i1; i++) {
          if constexpr (to_blocked) to[i * B + j] = from[j * hw + i];
          else to[j * hw + i] = from[i * B + j];
        }
    }
  }
}

template <bool to_blocked>
static void reorder(int64_t n, int64_t c, int64_t hw, int64_t block, const float* src, float* dst) {
  ENGINE_CHECK(block > 0 && c % block == 0, std::to_string(c) + " channels in blocks of " + std::to_string(block));
  with_channel_block(block, "reorder", [&](auto b) { reorder<decltype(b)::value, to_blocked>(n, c, hw, src, dst); });
}

void channels_to_blocked(int64_t n, int64_t c, int64_t hw, int64_t block, const float* x, float* y) {
  reorder<true>(n, c, hw, block, x, y);
}

void channels_from_blocked(int64_t n, int64_t c, int64_t hw, int64_t block, const float* x, float* y) {
  reorder<false>(n, c, hw, block, x, y);
}

}  // namespace engine::cpu
