// A uniform fake quantizer as a module, with a learned step: LSQ (Esser et al., "Learned Step Size
// Quantization", ICLR 2020). It is what a quantized layer owns for its weight and for its input, in QAT
// (the step a parameter the optimizer updates) and in PTQ (the step set from calibration).
//
//     x̂ = (clamp(round(x / s) + z, q_min, q_max) − z) · s                                  (LSQ Eq. 1-2)
//
// round is round half to even with a straight-through gradient, which gives LSQ's gradients (Eq. 3):
// d x̂ / d x = 1 inside the range, 0 outside; d x̂ / d s = round(v) − v inside, q_min − z or q_max − z
// outside (v = x / s). The step's gradient is scaled by g = 1 / sqrt(N · q_max) (Sec. 2.2), N the number
// of values one step quantizes. The forward is one op, engine::fake_quantize (engine/quantize.cpp), the
// same function as lsq_reference below, LSQ as the paper writes it in composed ops (tests/test_quantize.cpp
// checks one against the other).
//
// Codes: weights signed and restricted, [−(2^(B−1) − 1), 2^(B−1) − 1] as ./ptq's (quant/ptq_grid.h);
// activations unsigned [0, 2^B − 1] after a ReLU, signed [−2^(B−1), 2^(B−1) − 1] where the input can be
// negative (the network's image input). z is 0 in QAT; ./ptq's asymmetric activation ranges set it.
//
// The step is [1] (per tensor) or [C] (per output channel, dim 0, weights only); buffer `init_state` is 1
// once the step holds a value. An uninitialized quantizer initializes itself from the first tensor it sees
// in training (QAT's first batch) by the rule `init`:
//   min_error  the step of least quantization error Σ (x − x̂)² over s = α · max|x| / q_max, α = k / 100,
//              k = 1..100 (RepQ's "MinError" initialization); per channel for per-channel weights
//   lsq        LSQ's rule s = 2 · mean|x| / sqrt(q_max)
// min_error is the default: LSQ's rule clips the identity taps of a merged RepVGG kernel (the outliers OABN
// is about), and the model starts at chance even at 8 bits.
//
// LSQ leaves the step unconstrained, and SGD can take it through zero (tiny runs leave weight steps at
// −0.004; a diverging one left an input step at −9e20): a negative input step maps a ReLU's output onto
// negative codes, all clamped to 0, and no export can write it as a scale (a known LSQ problem: users of
// LSQplus and PPQ report negative scales; PPQ's answer is s = |s| after training). QAT's optimizer takes
// s = max(|s|, 1.19e-7) after every update (engine::ParamGroup::positive; the floor is PyTorch's observers'
// least scale, under which a bias's int32 code overflows). A weight's grid is symmetric, so x̂(−s) = x̂(s)
// and the reflection changes nothing the weight quantizer computes; an input step stays a valid scale.
//
// As torch.ao's FakeQuantize, a quantizer can observe its input (`observer`, ./ptq's calibration) and pass it
// through unchanged (`fake_quant` false).
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "engine/ops.h"
#include "layers/module.h"

namespace layers {

enum class StepInit { min_error, lsq };

StepInit parse_step_init(const std::string& s);  // "min-error" | "lsq"; throws otherwise
const char* step_init_name(StepInit s);

enum class Codes { weight, unsigned_act, signed_act };

// LSQ in the paper's terms, composed of differentiable ops (lsq-net's few lines): the readable reference of
// the fused engine::fake_quantize that Quantizer::forward runs. step [1] or [R] (per dim-0 row of x).
//   s' = s·g + sg(s − s·g)                           the value s, the gradient g · dL/ds'    (Sec. 2.2)
//   x̂ = (clamp(round_ste(x / s') + z, q_min, q_max) − z) · s'                              (Eq. 1-3)
Tensor lsq_reference(const Tensor& x, const Tensor& step, int zero_point, int q_min, int q_max, float grad_scale);

class Quantizer : public Module {
 public:
  // bits 2..16 (activation codes 1..16); channels 1 (per tensor) or the weight's output channels.
  Quantizer(int bits, Codes codes, int64_t channels = 1, StepInit init = StepInit::min_error);
  Tensor forward(const Tensor& x) override;  // x̂

  bool initialized() const;
  // Sets the step from x by the `init` rule (on the host) and marks it initialized.
  void init_from(const Tensor& x);
  void set_step(const std::vector<float>& steps);  // one, or one per channel; marks it initialized

  const int bits;
  const Codes codes;
  const int q_min, q_max;
  const StepInit init;
  Tensor step;        // [channels], a parameter
  Tensor init_state;  // [1], a buffer: 1 once the step is set
  int zero_point = 0; // z; ./ptq's asymmetric activation quantizers only
  std::function<void(const Tensor&)> observer;  // called with every input first, when set
  bool fake_quant = true;                       // false: forward returns its input

 private:
  mutable bool ready_ = false;  // init_state seen at 1 (read from the buffer until then)
};

// A layer's bias where its input and weight are quantized, as integer kernels hold it (and ./export --qdq
// writes it): engine::bias_codes at the quantizers' steps.
using engine::BiasCodes;
BiasCodes bias_codes(const Tensor& b, const Quantizer& act, const Quantizer& weight, const std::string& name = "bias");
// What a quantized layer adds in eval, the integer model's bias: b̂ = c · t (above), on b's device, as
// b + sg(b̂ − b) (b's gradient passes straight through). b itself in training (the bias stays float, as in
// RepQ and PyTorch's QAT), or where either quantizer is missing or passes its input through. At 8 bits
// |b̂ − b| ≤ t / 2 is far below the output's step; at 4 bits it is not (docs/repq.md).
Tensor eval_bias(const Tensor& b, const Quantizer* act, const Quantizer* weight, bool training,
                 const std::string& name = "bias");

// The scalar reference of forward, for one value: (clamp(round(x / s) + z, q_min, q_max) − z) · s.
float fake_quant(float x, float s, int z, int q_min, int q_max);
// The step of least Σ (x − x̂)² over the grid above (z = 0), for values v; at most 65,536 of them, evenly
// strided, are scored (max|v| is taken over all).
float min_error_step(const float* v, int64_t n, int q_min, int q_max);

}  // namespace layers
