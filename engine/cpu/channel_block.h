// The channel blocks the CPU kernels are instantiated for (ops.h, the activation layout): a kernel over
// [N, C/B, HW, B] takes B as a template argument, 1 standing for NCHW.
#pragma once
#include <cstdint>
#include <string>
#include <type_traits>

#include "engine/tensor.h"

namespace engine::cpu {

// f(std::integral_constant<int, B>{}) for block 0 (NCHW: B = 1), 8 or 16; any other block fails naming `what`.
template <class F>
void with_channel_block(int64_t block, const char* what, F f) {
  switch (block) {
    case 0: return f(std::integral_constant<int, 1>{});
    case 8: return f(std::integral_constant<int, 8>{});
    case 16: return f(std::integral_constant<int, 16>{});
  }
  fail(std::string(what) + ": channel block " + std::to_string(block) + " (0, 8 or 16 expected)");
}

}  // namespace engine::cpu
