// `make fuzz-seeds`: writes the fuzz targets' seed corpora, fuzz/corpus/<target>/, from real files: the
// tiny model's checkpoints (train, deploy and QAT form), a safetensors file of every dtype, records of the
// CIFAR-10 test and training batches, two imagenette images re-encoded at 10 x 8 pixels (JPEG, PNG, greyscale PNG)
// and the tiny model quantized (./ptq --export's file, 8 and 4 bits).
// Needs ../shared/data. The seeds are committed; run this only to remake them.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <stdexcept>

#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#define STB_IMAGE_WRITE_IMPLEMENTATION
#include <stb_image_write.h>

#include "datasets/decode.h"
#include "datasets/loader.h"
#include "fuzz/targets.h"
#include "quant/deploy_export.h"
#include "quant/ptq_model.h"

namespace fs = std::filesystem;

static std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + p.string());
  return std::string(std::istreambuf_iterator<char>(in), {});
}

static void put(const fs::path& p, const std::string& bytes) {
  fs::create_directories(p.parent_path());
  std::ofstream(p, std::ios::binary).write(bytes.data(), std::streamsize(bytes.size()));
}

static void checkpoints(const fs::path& out) {
  engine::Rng rng(1);
  {
    models::RepVGG m(fuzz::tiny_arch(), rng, 0.5f);
    layers::save_checkpoint((out / "train.safetensors").string(), m, {{"arch", "tiny"}, {"epoch", "3"}});
    m.switch_to_deploy();
    layers::save_checkpoint((out / "deploy.safetensors").string(), m);
  }
  models::RepVGG q(fuzz::tiny_arch(), rng, 0.5f);
  models::QatConfig c;
  c.method = models::QatMethod::repq_bn;
  c.bits = 4;
  q.set_qat(c);
  layers::save_checkpoint((out / "qat.safetensors").string(), q, models::qat_metadata(c));
}

// The tiny model quantized as ./ptq --export writes it: 8-bit per layer, 4-bit per channel with stage0 and
// the FC quantized too (a signed image input: a zero point of 8), and 8-bit with one block at W6/A5 (--layer-bits:
// each layer's widths in the file), calibrated on CIFAR-10 test images. (w8-version1.safetensors beside them is
// the 8-bit one as format version 1 wrote it: one "bits" and "act_bits", which load_int8 still reads.)
static void int8_models(const fs::path& cifar, const fs::path& out) {
  auto test = data::open_cifar10(cifar.string(), false, 16);
  data::Loader loader(*test, 16, /*train=*/false, 0, 1);
  for (int bits : {8, 4, 6}) {
    engine::Rng rng(2);
    models::RepVGG m(fuzz::tiny_arch(), rng, 0.5f);
    m.eval();
    m.switch_to_deploy();
    quant::QuantConfig c;
    c.weight_bits = c.act_bits = bits == 6 ? 8 : bits;
    c.granularity = bits == 4 ? quant::Granularity::channel : quant::Granularity::layer;
    c.quantize_first_last = bits == 4;
    if (bits == 6) {
      const size_t n = m.quant_layers().size();
      std::vector<models::LayerBits> layers;
      for (size_t i = 0; i < n; i++) layers.push_back(quant::bits_of(i, n, c));
      layers[2] = {6, 5};
      c.layers = layers;
    }
    quant::attach_quantizers(m, c, quant::calibrate(m, loader, 1, quant::CalibMethod::minmax, engine::Device::cpu));
    deploy::save_int8((out / ((bits == 6 ? std::string("mixed") : "w" + std::to_string(bits)) + ".safetensors")).string(),
                     quant::export_int8(m, "ptq-minmax", quant::granularity_name(c.granularity), {{"dataset", "cifar10"}}));
  }
}

static void safetensors(const fs::path& out) {
  st::File f;
  f.metadata = {{"arch", "repvgg-cifar"}, {"note", "every dtype"}};
  f.tensors["b"] = st::Entry::of<bool>({3}, std::vector<bool>{true, false, true});
  f.tensors["i64"] = st::Entry::of<int64_t>({}, std::vector<int64_t>{-7});
  f.tensors["f32"] = st::Entry::of<float>({2, 2}, std::vector<float>{1, -2, 0.5f, 3});
  f.tensors["f64"] = st::Entry::of<double>({1}, std::vector<double>{2.5});
  f.tensors["u8"] = st::Entry::of<uint8_t>({0, 4}, std::vector<uint8_t>{});
  f.tensors["h"] = st::Entry{st::DType::F16, {2}, {0x00, 0x3c, 0x00, 0xc0}};
  st::save((out / "dtypes.safetensors").string(), f);
}

static void images(const fs::path& data, const fs::path& out) {
  const char* files[] = {"imagenette/train/n03445777/ILSVRC2012_val_00044695.JPEG",
                         "imagenette/train/n03445777/ILSVRC2012_val_00024405.JPEG"};
  for (int k = 0; k < 2; k++) {
    data::Image img;
    data::decode_image((data / files[k]).string(), img);
    const int w = 10, h = 8;  // nearest neighbour, small enough for a seed
    std::vector<uint8_t> small(w * h * 3), grey(w * h);
    for (int y = 0; y < h; y++)
      for (int x = 0; x < w; x++) {
        const uint8_t* p = img.pixels.data() + (size_t(y * img.h / h) * img.w + size_t(x * img.w / w)) * 3;
        for (int c = 0; c < 3; c++) small[(y * w + x) * 3 + c] = p[c];
        grey[y * w + x] = uint8_t((p[0] + p[1] + p[2]) / 3);
      }
    const std::string base = (out / ("imagenette" + std::to_string(k))).string();
    if (!stbi_write_jpg((base + ".jpg").c_str(), w, h, 3, small.data(), 80) ||
        !stbi_write_png((base + ".png").c_str(), w, h, 3, small.data(), w * 3) ||
        !stbi_write_png((base + "-grey.png").c_str(), w, h, 1, grey.data(), w))
      throw std::runtime_error("cannot write " + base + ".*");
  }
}

int main() {
  try {
    const fs::path data = "../shared/data", out = "fuzz/corpus";
    fs::create_directories(out / "checkpoint");
    fs::create_directories(out / "safetensors");
    fs::create_directories(out / "image");
    fs::create_directories(out / "int8");
    checkpoints(out / "checkpoint");
    safetensors(out / "safetensors");
    fs::copy_file(out / "checkpoint" / "deploy.safetensors", out / "safetensors" / "deploy.safetensors",
                  fs::copy_options::overwrite_existing);
    const fs::path cifar = data / "cifar-10-batches-bin";
    put(out / "cifar" / "test-two-records.bin", slurp(cifar / "test_batch.bin").substr(0, 2 * 3073));
    put(out / "cifar" / "train-one-record.bin", slurp(cifar / "data_batch_1.bin").substr(0, 3073));
    images(data, out / "image");
    int8_models(cifar, out / "int8");
    std::puts("fuzz seeds written to fuzz/corpus/");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "make_seeds: %s\n", e.what());
    return 1;
  }
}
