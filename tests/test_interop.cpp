// Interop: the protobuf wire-format writer against bytes that Python wrote; ./export against onnx.checker
// and onnxruntime on real images.
#include <fmt/format.h>

#include "datasets/cifar10.h"
#include "datasets/image_folder.h"
#include "engine/safetensors.h"
#include "quant/export.h"
#include "interop/protobuf.h"
#include "layers/checkpoint.h"
#include "models/repvgg.h"
#include "tests/interop_testing.h"
#include "tests/testing.h"

using engine::Tensor;
using pb::Message;

namespace {

std::string hex(const std::string& bytes) {
  std::string s;
  for (unsigned char c : bytes) s += fmt::format("{:02x}", c);
  return s;
}

// The first n images of `ds` (eval transform) as one [n, 3, H, W] tensor.
Tensor images(const data::Dataset& ds, int n) {
  Tensor x = Tensor::empty({n, 3, ds.height(), ds.width()});
  for (int i = 0; i < n; i++) REQUIRE(ds.load(i, false, 0, x.f32() + (size_t)i * 3 * ds.height() * ds.width()));
  return x;
}

}  // namespace

TEST_CASE("protobuf writer: the encoding guide's examples and bytes that Python's protobuf and onnx wrote") {
  // https://protobuf.dev/programming-guides/encoding/
  CHECK(hex(Message().varint(1, 150).str()) == "089601");
  CHECK(hex(Message().bytes(2, "testing").str()) == "120774657374696e67");
  CHECK(hex(Message().message(3, Message().varint(1, 150)).str()) == "1a03089601");
  // google.protobuf.wrappers_pb2: UInt64Value(value=2**64-1), DoubleValue(value=1.5), FloatValue(value=-2.25)
  CHECK(hex(Message().varint(1, UINT64_MAX).str()) == "08ffffffffffffffffff01");
  CHECK(hex(Message().float64(1, 1.5).str()) == "09000000000000f83f");
  CHECK(hex(Message().float32(1, -2.25f).str()) == "0d000010c0");
  // onnx.helper.make_attribute("pads", [1, 1, 1, 1]): name, ints (unpacked, as proto2 writes them), type INTS
  Message pads;
  pads.bytes(1, "pads");
  for (int i = 0; i < 4; i++) pads.int64(8, 1);
  CHECK(hex(pads.varint(20, 7).str()) == "0a04706164734001400140014001a00107");
  // make_attribute("axis", -1): a negative int64 takes ten bytes
  CHECK(hex(Message().bytes(1, "axis").int64(3, -1).varint(20, 2).str()) == "0a046178697318ffffffffffffffffff01a00102");
  // make_tensor_value_info("input", FLOAT, ["batch", 3], doc_string="d"): four levels of nesting
  Message shape;
  shape.message(1, Message().bytes(2, "batch")).message(1, Message().int64(1, 3));
  Message type = Message().message(1, Message().varint(1, 1).message(2, shape));
  CHECK(hex(Message().bytes(1, "input").message(2, type).bytes(3, "d").str()) ==
        "0a05696e70757412130a110801120d0a07120562617463680a0208031a0164");
}

// Exports `model` (its checkpoint with `metadata`) with ./export's code, and has check_onnx.py compare
// onnxruntime's logits on x with the engine's deploy model's.
static void check_export(models::Model& model, const layers::Metadata& metadata, const Tensor& x) {
  TempDir dir;
  layers::save_checkpoint(dir / "ckpt.safetensors", model, metadata);
  REQUIRE(quant::run_export({"--ckpt", dir / "ckpt.safetensors", "--onnx", dir / "model.onnx"}) == 0);
  model.switch_to_deploy();
  model.eval();
  st::File io;
  io.tensors["input"] = layers::to_entry(x);
  io.tensors["logits"] = layers::to_entry(model.forward(x));
  st::save(dir / "io.safetensors", io);
  const PythonRun r = run_python({"tests/interop/check_onnx.py", dir / "model.onnx", dir / "io.safetensors", "1e-4"});
  MESSAGE(model.arch.name << ": " << r.output);
  CHECK(r.rc == 0);
}

static const std::vector<std::string> kOnnxModules = {"numpy", "onnx", "onnxruntime"};
static const char* const kPipHint = "make test installs them with pip; see scripts/install-deps.sh";

TEST_CASE("./export: RepVGG and QARepVGG CIFAR models in ONNX match ours on CIFAR-10 test images" *
          skip_unless(python_has(kOnnxModules) && have_path(shared_data_dir() + "/cifar-10-batches-bin"),
                      "export CIFAR: " + python_needs(kOnnxModules, kPipHint) + " and ../shared/data/cifar-10-batches-bin")) {
  auto test = data::open_cifar10(shared_data_dir() + "/cifar-10-batches-bin", /*train=*/false, 16);
  const Tensor x = images(*test, 16);  // spread over the sorted test batch: every class
  for (const char* arch : {"repvgg-cifar", "qarepvgg-cifar"}) {
    engine::Rng rng(7);
    models::RepVGG model(models::arch_config(arch), rng);
    randomize_bn(model, 8);
    check_export(model, {{"arch", arch}, {"dataset", "cifar10"}}, x);
  }
}

// ResNet-18's graph in ONNX: Add of the shortcut before the Relu, the 1x1 downsamples, the ImageNet stem's
// MaxPool; plain, ACB and OREPA blocks (their deploy convs), at width 8 on CIFAR-10 images.
TEST_CASE("./export: ResNet-18 (CIFAR and ImageNet stems; plain, ACB, OREPA) in ONNX matches ours on CIFAR-10 test images" *
          skip_unless(python_has(kOnnxModules) && have_path(shared_data_dir() + "/cifar-10-batches-bin"),
                      "export ResNet: " + python_needs(kOnnxModules, kPipHint) + " and ../shared/data/cifar-10-batches-bin")) {
  auto test = data::open_cifar10(shared_data_dir() + "/cifar-10-batches-bin", /*train=*/false, 16);
  const Tensor x = images(*test, 16);
  for (const char* arch : {"resnet18-w8", "acb-resnet18-cifar-w8", "orepa-resnet18-cifar-w8"}) {
    engine::Rng rng(7);
    auto model = models::make_model(models::arch_config(arch), rng);
    randomize_bn(*model, 8);
    check_export(*model, {{"arch", arch}, {"dataset", "cifar10"}}, x);
  }
}

TEST_CASE("./export: repvgg-a0 at 224 in ONNX matches ours on imagenette images" *
          skip_unless(python_has(kOnnxModules) && have_path(shared_data_dir() + "/imagenette/val"),
                      "export A0: " + python_needs(kOnnxModules, kPipHint) + " and ../shared/data/imagenette")) {
  auto val = data::open_image_folder(shared_data_dir() + "/imagenette/val", {}, 4);
  engine::Rng rng(9);
  models::RepVGG model(models::arch_config("repvgg-a0"), rng);
  randomize_bn(model, 10);
  check_export(model, {{"arch", "repvgg-a0"}, {"dataset", "imagenet"}}, images(*val, 4));
}

TEST_CASE("./export: bad options name the option") {
  CHECK_THROWS_WITH(quant::run_export({"--ckpt", "x.safetensors"}), doctest::Contains("--onnx FILE is required"));
  CHECK_THROWS_WITH(quant::run_export({"--onnx"}), doctest::Contains("option --onnx needs a value"));
  CHECK_THROWS_WITH(quant::run_export({"--frobnicate"}), doctest::Contains("unknown option '--frobnicate'"));
  CHECK_THROWS_WITH(quant::run_export({"--ckpt", "/nonexistent.safetensors", "--onnx", "x.onnx"}),
                    doctest::Contains("checkpoint /nonexistent.safetensors does not exist"));
}
