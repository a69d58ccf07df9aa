// RepQ against its PyTorch twin (tests/reference/repq_torch.py, files by make_repq_refs.py): a RepVGG block
// in merged mode with 4-bit quantizers, RepQ-BN and RepQ-BNEst; the min-error initial steps, the training
// output, loss, every gradient (branches, steps, input), the running statistics, and the eval output.
#include <set>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "layers/repvgg_block.h"
#include "tests/model_refs.h"

using namespace engine;
using namespace layers;
using testing_util::check_ref;
using testing_util::ref_tensor;
using testing_util::reference_path;

// float32 against these float64 references reaches 3e-7 (steps' gradients: 2.3e-6, a sum with
// cancellation); see tests/reference/README.md
static constexpr double kTol = 1e-5, kStepGradTol = 1e-4;

static void check_repq_reference(const std::string& file, BnFold fold, int64_t weight_channels) {
  const std::string path = reference_path(file);
  st::File f = st::load(path);
  Rng rng(1);
  RepVGGBlock block(8, 8, 1, 1, rng);
  block.switch_to_merged(fold);
  block.quant.set(std::make_shared<Quantizer>(4, Codes::unsigned_act),
                       std::make_shared<Quantizer>(4, Codes::weight, weight_channels));
  load_state_dict(block, f, "param.", path);
  REQUIRE_FALSE(block.quant.act->initialized());
  REQUIRE_FALSE(block.quant.weight->initialized());

  block.train();
  Tensor x = ref_tensor(f, "input");
  x.requires_grad_(true);
  Tensor out = block.forward(x);
  check_ref(block.quant.act->step, f, "init.act_quant.step", kTol);
  check_ref(block.quant.weight->step, f, "init.weight_quant.step", kTol);
  Tensor loss = sum_all(mul(out, ref_tensor(f, "loss_w")));
  loss.backward();
  check_ref(out, f, "out_train", kTol);
  check_ref(loss, f, "loss", kTol);
  check_ref(x.grad(), f, "grad.input", kTol);
  std::set<std::string> keys = {"grad.input"};
  for (auto& p : block.parameters()) {
    const bool step = p.name.ends_with(".step");
    check_ref(p.tensor.grad(), f, "grad." + p.name, step ? kStepGradTol : kTol);
    keys.insert("grad." + p.name);
  }
  for (auto& b : block.buffers()) {
    check_ref(b.tensor, f, "after." + b.name, kTol);
    keys.insert("after." + b.name);
  }
  for (auto& [key, e] : f.tensors)
    if (key.starts_with("grad.") || key.starts_with("after."))
      CHECK_MESSAGE(keys.count(key), file << ": reference " << key << " has no counterpart");

  block.eval();
  NoGradGuard no_grad;
  check_ref(block.forward(ref_tensor(f, "input")), f, "out_eval", kTol);
}

TEST_CASE("RepQ-BN block, 4 bits, per-tensor weight step, matches its PyTorch twin") {
  check_repq_reference("repq_bn_block.safetensors", BnFold::batch, 1);
}

TEST_CASE("RepQ-BNEst block, 4 bits, per-channel weight steps, matches its PyTorch twin") {
  check_repq_reference("repq_bnest_block.safetensors", BnFold::estimated, 8);
}
