// The cliff of oneDNN's reference kernels can never come back silently: repvgg-cifar and repvgg-a0 run a
// training step, an eval forward, a deploy forward and an int8 forward on this CPU, as oneDNN dispatches on
// it (ONEDNN_MAX_CPU_ISA=AVX2 makes an AVX-512 machine dispatch as an AVX2 one: .ci/run runs the suite both
// ways), and no convolution, inner product or reorder may be a reference implementation.
#include <doctest/doctest.h>

#include "datasets/cifar10.h"
#include "datasets/loader.h"
#include "engine/autograd.h"
#include "engine/cpu/dnnl.h"
#include "engine/kernels.h"
#include "engine/ops.h"
#include "engine/random.h"
#include "models/repvgg.h"
#include "deploy/int8_model.h"
#include "deploy/integer_model.h"
#include "quant/deploy_export.h"
#include "quant/ptq_model.h"
#include "tests/int8_testing.h"

namespace {

// The reference implementations made (dnnl_implementations() is a sorted set of "kind impl").
std::vector<std::string> reference_kernels() {
  std::vector<std::string> refs;
  for (const std::string& s : engine::cpu::dnnl_implementations())
    if (s.find(" ref") != std::string::npos) refs.push_back(s);
  return refs;
}

void run_model(const std::string& arch_name, int resolution) {
  engine::Rng rng(3);
  const models::ArchConfig arch = models::arch_config(arch_name);
  models::RepVGG model(arch, rng);
  // a training step
  engine::Tensor x = engine::rand_normal({2, 3, resolution, resolution}, 0, 1, rng);
  engine::Tensor labels = engine::Tensor::zeros({2}, engine::DType::i32);
  engine::cross_entropy(model.forward(x), labels).backward();
  // eval, then deploy
  model.eval();
  {
    engine::NoGradGuard g;
    model.forward(x);
    model.switch_to_deploy();
    model.forward(x);
  }
  // int8: calibrated on the made-up CIFAR-10 folder's images (32 x 32: the kernels are those of u8 NHWC)
  auto train = data::open_cifar10(small_cifar().string(), true);
  data::Loader calib(*train, 16, /*train=*/false, 0, 1);
  const quant::Calibration cal = quant::calibrate(model, calib, 1, quant::CalibMethod::minmax, engine::Device::cpu);
  quant::QuantConfig c;
  c.weight_bits = c.act_bits = 8;
  c.granularity = quant::Granularity::channel;
  quant::attach_quantizers(model, c, cal);
  deploy::IntegerModel im(quant::export_int8(model, "ptq-minmax", "channel", {}));
  im.forward(engine::rand_normal({2, 3, 32, 32}, 0, 1, rng));
}

}  // namespace

TEST_CASE("no oneDNN reference kernel in repvgg-cifar, qarepvgg-cifar and repvgg-a0: training, eval, deploy, int8") {
  MESSAGE("cpu: ", engine::cpu_summary());
  engine::cpu::dnnl_forget();  // the primitives other tests made (some in layouts this CPU does not want) aside
  run_model("repvgg-cifar", 32);
  run_model("qarepvgg-cifar", 32);
  run_model("repvgg-a0", 224);
  const std::vector<std::string> refs = reference_kernels();
  std::string list;
  for (const std::string& r : refs) list += "\n  " + r;
  INFO("reference implementations on ", engine::cpu_summary(), ":", list);
  CHECK(refs.empty());
  // and the engine's layout is the one oneDNN's convolutions want here
  CHECK(engine::activation_block() == engine::cpu::conv_channel_block());
}
