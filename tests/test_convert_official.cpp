// scripts/convert_official.py: official PyTorch RepVGG / QARepVGG checkpoints into our models, and ours
// into the official PyTorch model (tests/interop/official_roundtrip.py has the Python side).
#include "engine/safetensors.h"
#include "layers/checkpoint.h"
#include "models/repvgg.h"
#include "tests/interop_testing.h"
#include "tests/testing.h"

using engine::Tensor;

static const std::vector<std::string> kTorchModules = {"numpy", "torch"};
static const char* const kTorchHint = "apt-get install python3-torch";

TEST_CASE("convert_official.py: official training- and deploy-form .pth files give PyTorch's logits in our models" *
          skip_unless(python_has(kTorchModules), "convert_official: " + python_needs(kTorchModules, kTorchHint))) {
  TempDir dir;
  const PythonRun made = run_python({"tests/interop/official_roundtrip.py", "make", dir.path.string()});
  REQUIRE_MESSAGE(made.rc == 0, made.output);
  MESSAGE(made.output);
  for (const char* c : {"a0_train", "a0_deploy", "qacifar_train", "cifar_deploy"}) {
    const std::string name = c;
    const st::File ours = st::load(dir / (name + ".safetensors"));
    models::ArchConfig arch = models::arch_config(ours.metadata.at("arch"));
    arch.num_classes = std::stoi(ours.metadata.at("num_classes"));
    engine::Rng rng(0);
    models::RepVGG model(arch, rng);
    layers::load_checkpoint(dir / (name + ".safetensors"), model);  // a deploy-form file switches it first
    model.eval();
    const st::File io = st::load(dir / (name + ".io.safetensors"));
    const float rel = max_rel(model.forward(layers::from_entry(io.tensors.at("input"))), layers::from_entry(io.tensors.at("logits")));
    MESSAGE(name << " (" << arch.name << "): max relative logit difference against the official model: " << rel);
    CHECK(rel < 1e-4f);
    CHECK(model.blocks()[0]->deployed() == (name.find("deploy") != std::string::npos));
  }
}

TEST_CASE("convert_official.py: every arch's names, groups and forms; bad files refused with the reason" *
          skip_unless(python_has(kTorchModules), "convert_official archs: " + python_needs(kTorchModules, kTorchHint))) {
  const PythonRun r = run_python({"tests/interop/official_roundtrip.py", "archs"});
  MESSAGE(r.output);
  CHECK(r.rc == 0);
}

TEST_CASE("our checkpoints load into the official PyTorch model with load_state_dict(strict=True)" *
          skip_unless(python_has(kTorchModules), "reverse: " + python_needs(kTorchModules, kTorchHint))) {
  for (const char* name : {"repvgg-cifar", "qarepvgg-cifar"})
    for (bool deploy : {false, true}) {
      engine::Rng rng(3);
      models::RepVGG model(models::arch_config(name), rng);
      randomize_bn(model, 4);
      model.eval();
      if (deploy) model.switch_to_deploy();
      Tensor x = Tensor::empty({2, 3, 32, 32});
      for (int64_t i = 0; i < x.numel(); i++) x.f32()[i] = (float)rng.normal();
      TempDir dir;
      layers::save_checkpoint(dir / "ckpt.safetensors", model, {{"arch", name}, {"dataset", "cifar10"}});
      st::File io;
      io.tensors["input"] = layers::to_entry(x);
      io.tensors["logits"] = layers::to_entry(model.forward(x));
      st::save(dir / "io.safetensors", io);
      const PythonRun r = run_python({"tests/interop/official_roundtrip.py", "reverse", dir / "ckpt.safetensors", dir / "io.safetensors"});
      MESSAGE(r.output);
      CHECK(r.rc == 0);
    }
}
