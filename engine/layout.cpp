// The activation layout (ops.h): the block the engine stores CPU activations in, and the recorded
// conversion between layouts. Kernels: engine/cpu/layout.cpp.
#include <cstdlib>

#include "engine/autograd.h"
#include "engine/kernels.h"
#include "engine/ops.h"

namespace engine {

static int64_t g_block = -1;  // -1: not chosen yet (oneDNN is asked on first use)

// REPQ_BLOCK=0|8|16 in the environment overrides oneDNN's choice (a debugging aid, as REPQ_WINOGRAD=0).
int64_t activation_block() {
  if (g_block < 0) {
    const char* e = std::getenv("REPQ_BLOCK");
    const std::string v = e ? e : "";
    ENGINE_CHECK(!e || v == "0" || v == "8" || v == "16", "REPQ_BLOCK=" + v + ": expected 0, 8 or 16");
    g_block = e ? std::stoll(v) : cpu::conv_channel_block();
  }
  return g_block;
}

void set_activation_block(int64_t block) {
  ENGINE_CHECK(block == 0 || block == 8 || block == 16, "channel block " + std::to_string(block) + ": 0, 8 or 16");
  g_block = block;
}

std::string cpu_summary() {
  const int64_t b = activation_block();
  return "oneDNN ISA " + cpu::dnnl_isa() + (cpu::dnnl_has_vnni() ? " (VNNI)" : " (no VNNI)") + ", activations " +
         (b ? "nChw" + std::to_string(b) + "c" : std::string("NCHW"));
}

// x [N, C, H, W] -> the same values in the layout of `block`; the gradient goes back to x's layout.
Tensor to_layout(const Tensor& x, int64_t block) {
  if (!x.defined() || x.channel_block() == block) return x;
  ENGINE_CHECK(x.dim() == 4 && x.dtype() == DType::f32 && x.device() == Device::cpu,
               "the blocked layout is for f32 [N, C, H, W] on the CPU, got " + x.str());
  ENGINE_CHECK(block == 0 || block == 8 || block == 16, "channel block " + std::to_string(block) + ": 0, 8 or 16");
  ENGINE_CHECK(block == 0 || x.size(1) % block == 0,
               "x " + x.str() + ": " + std::to_string(x.size(1)) + " channels do not fill blocks of " + std::to_string(block));
  Tensor y = Tensor::empty(x.shape());
  y.impl()->channel_block = block;
  y.copy_(x);  // the values into y's layout (engine/cpu/layout.cpp's reorders)
  record(y, "to_layout", {x}, [](const Tensor& out, const Tensor& g) {
    const Tensor& x = out.grad_fn()->inputs[0];
    Tensor gx = empty_like(x);
    gx.copy_(g);
    accumulate_grad(x, gx);
  });
  return y;
}

}  // namespace engine
