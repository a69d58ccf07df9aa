// ResNet-18 through quantization: the QAT set-up's one quantizer per block input, and the programs downstream of
// ./train on an AC-ResNet-18 (QAT methods, ./ptq and its exports, ./infer, ./inspect, ./export, sensitivity).
// The model against its PyTorch twin: tests/test_resnet.cpp; the integer model: tests/test_int8.cpp; ONNX:
// tests/test_interop.cpp and test_qdq_export.cpp.
#include <doctest/doctest.h>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/random.h"
#include "models/resnet.h"
#include "tests/block_testing.h"
#include "tests/testing.h"

using engine::Tensor;

// A block's input is one tensor: conv1 owns its quantizer, the downsample shares it (not a parameter of its own,
// so the optimizer steps it once), and the identity shortcut adds the same quantized values.
TEST_CASE("ResNet QAT: a block input has one quantizer, conv1's, shared by the downsample; widths that differ are refused") {
  for (models::QatMethod method : {models::QatMethod::repq_bn, models::QatMethod::merged, models::QatMethod::cluster}) {
    CAPTURE(models::qat_method_name(method));
    engine::Rng rng(1);
    auto m = models::make_model(models::arch_config("acb-resnet18-cifar-w8"), rng);
    m->set_qat({method, 4, 8, false, false, layers::StepInit::min_error});
    auto& r = dynamic_cast<models::ResNet&>(*m);
    int shared = 0;
    for (const auto& b : r.basic_blocks) {
      CHECK(b->conv1->quant.act);
      CHECK_FALSE(b->conv1->quant.input_shared());
      if (!b->downsample) continue;
      CHECK(b->downsample->quant.act == b->conv1->quant.act);
      CHECK(b->downsample->quant.input_shared());
      shared++;
    }
    CHECK(shared == 3);
    int act_steps = 0;
    for (const layers::Param& p : m->parameters()) {
      CHECK(p.name.find("downsample.act_quant") == std::string::npos);
      act_steps += p.name.ends_with("act_quant.step");
    }
    CHECK(act_steps == 21 - 2 - 3);  // 20 convs and the FC, less the FP32 stem and FC, less the 3 downsamples
    // a training step runs, every loss finite
    m->train();
    const Tensor x = engine::rand_normal({4, 3, 32, 32}, 0.0f, 1.0f, rng);
    Tensor labels = Tensor::empty({4}, engine::DType::i32);
    for (int i = 0; i < 4; i++) labels.data<int32_t>()[i] = i;
    Tensor loss = engine::cross_entropy(m->forward(x), labels);
    CHECK(std::isfinite(loss.item()));
    loss.backward();
    CHECK(std::isfinite(r.basic_blocks[2]->conv1->quant.act->step.grad().to_vector()[0]));
  }
  engine::Rng rng(1);
  auto m = models::make_model(models::arch_config("resnet18-cifar-w8"), rng);
  const size_t n = models::layer_specs(m->arch).size();
  std::vector<models::LayerBits> widths(n, {8, 8});
  widths.front() = widths.back() = {};
  widths[6] = {8, 4};  // layer2.0.downsample, reading layer2.0.conv1's input at other bits
  REQUIRE(m->specs[6].name == "layer2.0.downsample");
  models::QatConfig c;
  c.layers = widths;
  CHECK_THROWS_WITH_AS(m->set_qat(c), doctest::Contains("layer2.0.downsample reads the input of layer2.0.conv1"), std::runtime_error);
}

TEST_CASE("programs on acb-resnet18-cifar-w8: train, every QAT method, ptq (int8, compressed, sensitivity, two widths), infer, inspect, export") {
  block_testing::check_programs("acb-resnet18-cifar-w8", "layer2.0.conv2.hor_conv.weight");
}
