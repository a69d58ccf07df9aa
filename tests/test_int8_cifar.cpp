// The integer model against ./ptq's fake quantization of the same model on all 10,000 CIFAR-10 test images:
// their top-1s within 0.1 points, at W8/A8 (without VNNI: the exact split) and W7/A8 (one convolution on any
// CPU). CI runs it natively and under ONEDNN_MAX_CPU_ISA=AVX2 (docs/int8.md).
#include <doctest/doctest.h>

#include "datasets/cifar10.h"
#include "datasets/loader.h"
#include "engine/autograd.h"
#include "engine/ops.h"
#include "layers/checkpoint.h"
#include "models/repvgg.h"
#include "deploy/int8_model.h"
#include "deploy/integer_model.h"
#include "quant/deploy_export.h"
#include "quant/ptq_model.h"
#include "tests/testing.h"

namespace {

std::string cifar_dir() { return shared_data_dir() + "/cifar-10-batches-bin"; }

// A width-8 CIFAR RepVGG trained 2 epochs (tests/test_qdq_export.cpp's subject, 38.9% top-1).
const char* const kTrained = "tests/reference/qdq_cifar_w8.safetensors";

}  // namespace

TEST_CASE("int8 model on the 10,000 CIFAR-10 test images: top-1 within 0.1 points of ./ptq's fake quantization" *
          skip_unless(have_path(cifar_dir()), "int8 on CIFAR-10: no ../shared/data/cifar-10-batches-bin")) {
  engine::Rng rng(0);
  models::RepVGG model(models::cifar_config(models::BlockType::repvgg, 8), rng);
  layers::load_checkpoint(kTrained, model);
  model.eval();
  model.switch_to_deploy();
  // as ./ptq calibrates: batches of training images spread over the set, eval transform
  auto train = data::open_cifar10(cifar_dir(), /*train=*/true, 4 * 128);
  data::Loader calib(*train, 128, /*train=*/false, 0, 2);
  const quant::Calibration cal = quant::calibrate(model, calib, 4, quant::CalibMethod::minmax, engine::Device::cpu);
  auto test = data::open_cifar10(cifar_dir(), /*train=*/false, 0);
  data::Loader val(*test, 500, /*train=*/false, 0, 2);
  MESSAGE("cpu: ", engine::cpu_summary());
  for (int weight_bits : {8, 7}) {
    quant::QuantConfig c;
    c.weight_bits = weight_bits;
    c.act_bits = 8;
    c.granularity = quant::Granularity::channel;
    quant::attach_quantizers(model, c, cal);
    deploy::IntegerModel im(quant::export_int8(model, "ptq-minmax", "channel", {}));
    int64_t fake = 0, integer = 0, images = 0;
    val.start_epoch(0);
    engine::Tensor x, y;
    while (const data::Batch* b = val.next()) {
      data::to_tensors(*b, engine::Device::cpu, x, y);
      {
        engine::NoGradGuard g;
        fake += engine::topk_correct(model.forward(x), y, 1);
      }
      integer += engine::topk_correct(im.forward(x), y, 1);
      images += b->n;
    }
    REQUIRE(images == 10000);
    const double fake_top1 = 100.0 * fake / images, int_top1 = 100.0 * integer / images;
    MESSAGE("W", weight_bits, "/A8: ./ptq ", fake_top1, "%, integer ", int_top1, "% (", im.split_layers(),
            " layers on the exact split)");
    CHECK(std::abs(fake_top1 - int_top1) <= 0.1);
    CHECK(fake_top1 > 35.0);  // the subject is trained
    quant::remove_quantizers(model);
  }
}
