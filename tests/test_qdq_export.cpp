// ./export --qdq: a QAT model's QDQ ONNX form against onnx.checker and onnxruntime's int8 kernels, compared
// with our fake-quantized deploy model on real CIFAR-10 test images; its errors.
#include <fstream>
#include <iterator>

#include "datasets/cifar10.h"
#include "engine/safetensors.h"
#include "interop/export.h"
#include "interop/onnx.h"
#include "layers/checkpoint.h"
#include "models/repvgg.h"
#include "tests/interop_testing.h"
#include "tests/testing.h"
#include "trainer/step.h"

using engine::Tensor;

namespace {

// Images first..first+n of `ds` (eval transform) as [n, 3, H, W], and their labels.
Tensor images(const data::Dataset& ds, int first, int n, std::vector<float>* labels = nullptr) {
  Tensor x = Tensor::empty({n, 3, ds.height(), ds.width()});
  for (int i = 0; i < n; i++) {
    REQUIRE(ds.load(first + i, false, 0, x.f32() + (size_t)i * 3 * ds.height() * ds.width()));
    if (labels) labels->push_back((float)ds.label(first + i));
  }
  return x;
}

const std::vector<std::string> kOnnxModules = {"numpy", "onnx", "onnxruntime"};
const char* const kNeeds = " and ../shared/data/cifar-10-batches-bin";

std::string cifar_dir() { return shared_data_dir() + "/cifar-10-batches-bin"; }

// Checks `model` (deploy form, quantizers set) in QDQ ONNX form with check_qdq.py on the images `x`,
// against our fake-quantized logits.
void check_qdq(models::RepVGG& model, const std::string& what, const Tensor& x, const std::vector<float>& labels) {
  TempDir dir;
  interop::OnnxOptions opt;
  opt.qdq = true;
  st::write_file_atomic(dir / "model.onnx", interop::repvgg_to_onnx(model, opt));
  model.eval();
  const Tensor logits = model.forward(x);
  st::File io;
  io.tensors["input"] = layers::to_entry(x);
  io.tensors["labels"] = layers::to_entry(Tensor::from_vector(labels, {(int64_t)labels.size()}));
  io.tensors["logits"] = layers::to_entry(logits);
  st::save(dir / "io.safetensors", io);
  const PythonRun r = run_python({"tests/interop/check_qdq.py", dir / "model.onnx", dir / "io.safetensors", "1e-3", "0.93", "1.0"});
  MESSAGE(what << ": " << r.output);
  CHECK(r.rc == 0);
}

}  // namespace

// The subject: a width-8 CIFAR RepVGG trained in full precision for 2 epochs of 2,048 real CIFAR-10
// training images, then quantized at 8 bits (per-channel weights, the first block's signed int8 input and
// the FC too), the steps initialized by one training-mode forward as QAT's first batch does.
//
// Ours run the convs in float on x̂; onnxruntime's QLinearConv accumulates the codes in int32 and requantizes
// its output straight to the next layer's codes, with the bias rounded to steps of s_x·s_w. A value within
// float rounding of a half-step boundary takes the neighbouring code on one side, and such one-step
// differences travel to the logits of some images, more in a barely trained model (in onnxruntime alone,
// a 1e-6 relative change of the input moves this kind of model's logits by ~1% for half the images). So:
// the median image's logits within 1e-3 (of their largest) of ours, 93% of the argmaxes agree, and the
// top-1s within 1 point, on these 500 test images. (Measured: median 4e-5, 95% agree, 0.2 points.)
TEST_CASE("./export --qdq: a trained model in QDQ form, onnxruntime's int8 run equals our fake-quantized one on 500 CIFAR-10 test images" *
          skip_unless(python_has(kOnnxModules) && have_path(cifar_dir()),
                      "export --qdq: " + python_needs(kOnnxModules, "make test installs them with pip") + kNeeds)) {
  auto train_set = data::open_cifar10(cifar_dir(), /*train=*/true, 2048);
  auto test_set = data::open_cifar10(cifar_dir(), /*train=*/false, 500);
  std::vector<float> labels;
  const Tensor x = images(*test_set, 0, 500, &labels);
  const Tensor first_batch = images(*train_set, 0, 64);

  engine::Rng rng(11);
  models::RepVGG model(models::cifar_config(models::BlockType::repvgg, 8), rng);
  train::Optimizer opt = train::make_optimizer(model, 0.05f, 0.9f, false, 1e-4f, false);
  data::Loader loader(*train_set, 64, /*train=*/true, 5, 2);
  Tensor bx, by;
  model.train();
  for (int epoch = 0; epoch < 2; epoch++) {
    loader.start_epoch(epoch);
    while (const data::Batch* b = loader.next()) {
      data::to_tensors(*b, engine::Device::cpu, bx, by);
      REQUIRE(train::train_step(model, opt.sgd, bx, by, 0.0f, 0.0f).stepped);
    }
  }

  // 8 bits, per-channel weight steps, the first block's signed int8 input and the FC quantized too.
  model.set_qat({"repq-bn", 8, 8, /*per_channel=*/true, /*quantize_first_last=*/true, layers::StepInit::min_error});
  model.forward(first_batch);
  model.switch_to_deploy();
  check_qdq(model, "8/8 bits", x, labels);
}

// The command: a QAT checkpoint's quantizers rebuilt by load_model, the file byte for byte the model's own export.
TEST_CASE("./export --qdq: a QAT checkpoint exports as the model it was saved from" * skip_unless(have_path(cifar_dir()), "export --qdq file" + std::string(kNeeds))) {
  TempDir dir;
  engine::Rng rng(11);
  models::RepVGG model(models::arch_config("repvgg-cifar"), rng);
  randomize_bn(model, 12);
  const models::QatConfig qat = {"repq-bn", 8, 8, true, true, layers::StepInit::min_error};
  model.set_qat(qat);
  model.train();
  auto train_set = data::open_cifar10(cifar_dir(), /*train=*/true, 32);
  model.forward(images(*train_set, 0, 32));  // initializes the steps, as QAT's first batch
  layers::Metadata md = {{"arch", "repvgg-cifar"}, {"dataset", "cifar10"}};
  md.merge(models::qat_metadata(qat));
  layers::save_checkpoint(dir / "ckpt.safetensors", model, md);
  REQUIRE(interop::run_export({"--ckpt", dir / "ckpt.safetensors", "--onnx", dir / "model.onnx", "--qdq"}) == 0);
  model.switch_to_deploy();
  interop::OnnxOptions opt;
  opt.qdq = true;
  opt.source = dir / "ckpt.safetensors";
  std::ifstream in(dir / "model.onnx", std::ios::binary);
  const std::string file((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  CHECK(file.size() > 100000);
  CHECK(file == interop::repvgg_to_onnx(model, opt));
}

TEST_CASE("./export --qdq: a checkpoint without quantizers, with codes wider than 8 bits or with unset steps is refused naming it") {
  TempDir dir;
  engine::Rng rng(3);
  models::RepVGG fp(models::arch_config("repvgg-cifar"), rng);
  layers::save_checkpoint(dir / "fp.safetensors", fp, {{"arch", "repvgg-cifar"}, {"dataset", "cifar10"}});
  const std::string no_quantizers = "--qdq: " + (dir / "fp.safetensors") + " has no quantizers";
  CHECK_THROWS_WITH(interop::run_export({"--ckpt", dir / "fp.safetensors", "--onnx", dir / "m.onnx", "--qdq"}),
                    doctest::Contains(no_quantizers.c_str()));

  const models::QatConfig wide = {"repq-bn", 16, 8, false, false, layers::StepInit::min_error};
  models::RepVGG qat(models::arch_config("repvgg-cifar"), rng);
  qat.set_qat(wide);
  qat.train();
  qat.forward(Tensor::full({2, 3, 32, 32}, 0.5f));  // sets the steps
  layers::Metadata md = {{"arch", "repvgg-cifar"}, {"dataset", "cifar10"}};
  md.merge(models::qat_metadata(wide));
  layers::save_checkpoint(dir / "wide.safetensors", qat, md);
  CHECK_THROWS_WITH(interop::run_export({"--ckpt", dir / "wide.safetensors", "--onnx", dir / "m.onnx", "--qdq"}),
                    doctest::Contains("stage1.0.weight_quant has 16-bit codes; opset 13's QuantizeLinear holds 8 at most"));

  const models::QatConfig fresh = {"repq-bn", 8, 8, false, false, layers::StepInit::min_error};
  models::RepVGG unset(models::arch_config("repvgg-cifar"), rng);
  unset.set_qat(fresh);  // saved before any batch: no step set
  md = {{"arch", "repvgg-cifar"}, {"dataset", "cifar10"}};
  md.merge(models::qat_metadata(fresh));
  layers::save_checkpoint(dir / "unset.safetensors", unset, md);
  CHECK_THROWS_WITH(interop::run_export({"--ckpt", dir / "unset.safetensors", "--onnx", dir / "m.onnx", "--qdq"}),
                    doctest::Contains("stage1.0.act_quant's step was never set"));
  CHECK_FALSE(std::filesystem::exists(dir / "m.onnx"));
}
