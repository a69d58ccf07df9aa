// The quantized deploy model file (deploy/int8_model.h, docs/int8.md): ./ptq's export from a calibrated
// model, its round trip, and a clear error naming the file and the tensor for each kind of corrupt file.
#include <fmt/format.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <numeric>

#include "engine/safetensors.h"
#include "layers/quantizer.h"
#include "datasets/cifar10.h"
#include "datasets/image_folder.h"
#include "datasets/loader.h"
#include "datasets/transforms.h"
#include "engine/random.h"
#include "deploy/cluster_file.h"
#include "quant/deploy_export.h"
#include "quant/infer.h"
#include "deploy/int8_model.h"
#include "quant/ptq.h"
#include "quant/ptq_model.h"
#include "tests/int8_testing.h"
#include "tests/testing.h"

namespace fs = std::filesystem;

namespace {

doctest::Contains has(const std::string& s) { return doctest::Contains(doctest::String(s.c_str())); }

// The file of `m` with `edit` applied to its tensors, as a corrupt export would be.
std::string edited(const deploy::Int8Model& m, const fs::path& dir, const std::function<void(st::File&)>& edit) {
  const std::string path = (dir / "edited.safetensors").string();
  deploy::save_int8(path, m);
  st::File f = st::load(path);
  edit(f);
  st::save(path, f);
  return path;
}

// A full-width repvgg-cifar ClusterQAT model (codebooks and steps set by one training forward) in deploy form,
// saved as ./ptq --export writes it, read back by load_deploy_model, and export_int8 of the model itself.
struct ClusterFile {
  std::shared_ptr<models::Model> model;
  std::string path;
  deploy::Int8Model loaded, direct;
};
ClusterFile cluster_file(const models::QatConfig& c, uint64_t seed, const std::string& dir_name) {
  engine::Rng rng(seed);
  ClusterFile r;
  r.model = std::make_shared<models::RepVGG>(models::arch_config("repvgg-cifar"), rng);  // full width: the file names only the arch
  r.model->set_qat(c);
  r.model->forward(engine::rand_uniform({2, 3, 32, 32}, -1, 1, rng));
  r.model->eval();
  r.model->switch_to_deploy();
  const fs::path dir = fresh_temp_dir(dir_name);
  fs::create_directories(dir);
  r.path = (dir / "model.cluster.safetensors").string();
  st::save(r.path, quant::compress_cluster(*r.model, {{"arch", "repvgg-cifar"}, {"dataset", "cifar10"}, {"num_classes", "10"}}));
  r.loaded = deploy::load_deploy_model(r.path);
  r.direct = quant::export_int8(*r.model, "qat-cluster", "channel", {});
  return r;
}

// Every layer of `loaded` as `direct` has it.
void check_same_layers(const deploy::Int8Model& loaded, const deploy::Int8Model& direct) {
  REQUIRE(loaded.layers.size() == direct.layers.size());
  for (size_t i = 0; i < loaded.layers.size(); i++) {
    const deploy::Int8Layer &a = loaded.layers[i], &b = direct.layers[i];
    CAPTURE(a.name);
    CHECK(a.quantized == b.quantized);
    CHECK(a.widths == b.widths);
    CHECK(a.weight_codes == b.weight_codes);
    CHECK(a.weight_scale == b.weight_scale);
    CHECK(a.bias_codes == b.bias_codes);
    CHECK(a.input_scale == b.input_scale);
    CHECK(a.input_zero_point == b.input_zero_point);
    CHECK(a.weight == b.weight);
  }
}

}  // namespace

TEST_CASE("int8 export: codes, scales and int32 biases of each quantized layer, FP32 layers as they are") {
  for (const char* g : {"layer", "channel"}) {
    CAPTURE(g);
    const QuantizedSmall q = quantized_small(4, g == std::string("channel") ? quant::Granularity::channel
                                                                           : quant::Granularity::layer, false);
    const deploy::Int8Model m = quant::export_int8(*q.model, "ptq-minmax", g, {{"dataset", "cifar10"}});
    REQUIRE(m.layers.size() == q.model->blocks().size() + 1);
    CHECK_FALSE(m.layers.front().quantized);  // stage0 and the FC stay FP32 by default
    CHECK_FALSE(m.layers.back().quantized);
    for (size_t i = 1; i + 1 < m.layers.size(); i++) {
      const deploy::Int8Layer& l = m.layers[i];
      const layers::RepBlock& b = *q.model->blocks()[i];
      REQUIRE(l.quantized);
      const std::vector<float> w = b.rbr_reparam->weight.to_vector(), bias = b.rbr_reparam->bias.to_vector();
      const std::vector<float> s_w = b.quant.weight->step.to_vector();
      CHECK(l.weight_scale == s_w);
      CHECK(l.input_scale == b.quant.act->step.to_vector()[0]);
      CHECK(l.input_zero_point == 0);
      const size_t per_row = w.size() / l.out;
      for (size_t k = 0; k < w.size(); k++) {  // the code times the scale is the fake-quantized weight, exactly
        const float s = l.w_scale((int)(k / per_row));
        REQUIRE(std::abs(l.weight_codes[k]) <= 7);
        REQUIRE((float)l.weight_codes[k] * s == layers::fake_quant(w[k], s, 0, -7, 7));
      }
      for (int o = 0; o < l.out; o++)  // |q_b s_x s_w - b| <= s_x s_w / 2
        REQUIRE(std::abs(l.bias_codes[o] * (double)l.input_scale * l.w_scale(o) - bias[o]) <=
                0.5 * l.input_scale * l.w_scale(o) * (1 + 1e-6));
    }
  }
}

TEST_CASE("int8 export: save and load give the same model; --quantize-first-last's signed input as unsigned codes") {
  const fs::path dir = fresh_temp_dir("int8_roundtrip");
  fs::create_directories(dir);
  const QuantizedSmall q = quantized_small(8, quant::Granularity::channel, true);
  const deploy::Int8Model m = quant::export_int8(*q.model, "ptq-minmax", "channel", {{"dataset", "cifar10"}});
  CHECK(m.layers.front().quantized);
  CHECK(m.layers.back().quantized);
  CHECK(m.layers.front().input_zero_point > 0);  // the normalized image is negative too
  const std::string path = (dir / "m.int8.safetensors").string();
  deploy::save_int8(path, m);
  const deploy::Int8Model r = deploy::load_int8(path);
  CHECK(r.arch.name == m.arch.name);
  for (const deploy::Int8Layer& l : r.layers) CHECK(l.widths == models::LayerBits{8, 8});
  CHECK(r.method == "ptq-minmax");
  CHECK(r.metadata.at("dataset") == "cifar10");
  REQUIRE(r.layers.size() == m.layers.size());
  for (size_t i = 0; i < m.layers.size(); i++) {
    CHECK(r.layers[i].weight_codes == m.layers[i].weight_codes);
    CHECK(r.layers[i].bias_codes == m.layers[i].bias_codes);
    CHECK(r.layers[i].weight_scale == m.layers[i].weight_scale);
    CHECK(r.layers[i].input_scale == m.layers[i].input_scale);
    CHECK(r.layers[i].input_zero_point == m.layers[i].input_zero_point);
  }
  // A QAT-style signed input quantizer (z = 0, codes [-128, 127]) is the same function on [0, 255], z = 128.
  auto signed_act = std::make_shared<layers::Quantizer>(8, layers::Codes::signed_act);
  signed_act->set_step({0.03f});
  q.model->blocks()[0]->quant.set(signed_act, q.model->blocks()[0]->quant.weight);
  const deploy::Int8Model s = quant::export_int8(*q.model, "qat-repq-bn", "channel", {});
  CHECK(s.layers.front().input_zero_point == 128);
}

TEST_CASE("int8 export: a corrupt file gives an error naming the file and the tensor") {
  const fs::path dir = fresh_temp_dir("int8_corrupt");
  fs::create_directories(dir);
  const QuantizedSmall q = quantized_small(4, quant::Granularity::layer, false);
  const deploy::Int8Model m = quant::export_int8(*q.model, "ptq-minmax", "layer", {});
  auto error = [&](const std::function<void(st::File&)>& edit) {
    const std::string path = edited(m, dir, edit);
    try {
      deploy::load_int8(path);
    } catch (const std::exception& e) {
      const std::string what = e.what();
      CHECK(what.find(path) != std::string::npos);
      return what;
    }
    return std::string("no error");
  };
  auto expect = [&](const std::function<void(st::File&)>& edit, const std::string& message) {
    const std::string what = error(edit);
    CAPTURE(what);
    CHECK(what.find(message) != std::string::npos);
  };
  auto set_f32 = [](st::File& f, const std::string& name, float v) {
    std::vector<float> x = f.tensors.at(name).to_vector<float>();
    x[0] = v;
    f.tensors[name] = st::Entry::of(f.tensors.at(name).shape, x);
  };
  expect([](st::File& f) {
               st::Entry& e = f.tensors.at("stage1.0.weight");
               e = st::Entry::of(e.shape, std::vector<int16_t>(e.numel(), 1).data());
             },
         "tensor 'stage1.0.weight' has dtype I16, expected I8 (a quantized layer) or F32");
  expect([](st::File& f) { f.tensors.erase("stage1.1.weight_scale"); },
         "tensor 'stage1.1.weight_scale' is missing");
  expect([](st::File& f) { f.tensors.erase("stage2.0.input_zero_point"); },
         "tensor 'stage2.0.input_zero_point' is missing");
  expect([](st::File& f) {
               std::vector<int8_t> w = f.tensors.at("stage1.0.weight").to_vector<int8_t>();
               w[5] = 8;  // 4 bits: [-7, 7]
               f.tensors["stage1.0.weight"] = st::Entry::of(f.tensors.at("stage1.0.weight").shape, w);
             },
         "tensor 'stage1.0.weight' holds the code 8 at [5], outside [-7, 7] of 4-bit weights");
  expect([&](st::File& f) { set_f32(f, "stage1.0.input_scale", 0.0f); },
         "tensor 'stage1.0.input_scale' holds 0 at [0]: a scale must be finite and > 0");
  expect([&](st::File& f) { set_f32(f, "stage2.0.weight_scale", std::nanf("")); },
         "tensor 'stage2.0.weight_scale' holds nan at [0]: a scale must be finite and > 0");
  expect([&](st::File& f) { set_f32(f, "linear.weight", INFINITY); }, "tensor 'linear.weight' holds inf");
  expect([](st::File& f) { f.tensors["stage1.0.bias"] = st::Entry::of({3}, std::vector<int32_t>{1, 2, 3}); },
         "tensor 'stage1.0.bias' has shape [3], expected [8]");
  expect([](st::File& f) {
               f.tensors["stage1.0.weight_scale"] = st::Entry::of({2}, std::vector<float>{1, 1});
             },
         "tensor 'stage1.0.weight_scale' has shape [2], expected [1] (one scale per layer)");
  expect([](st::File& f) { f.tensors["stage1.0.input_zero_point"] = st::Entry::of({1}, std::vector<int32_t>{3}); },
         "tensor 'stage1.0.input_zero_point' is 3, expected 0 (the input follows a ReLU)");
  expect([](st::File& f) { f.tensors["stage9.weight"] = st::Entry::of({1}, std::vector<float>{1}); },
         "tensor 'stage9.weight' is not part of a quantized repvgg-cifar");
  // each layer's widths: metadata "layer_bits", one entry per layer, fp32 where the weight is F32
  auto set_width = [](st::File& f, size_t layer, const std::string& w) {
    std::vector<models::LayerBits> l = models::parse_layer_widths(f.metadata.at("layer_bits"), "test");
    std::string s;
    for (size_t i = 0; i < l.size(); i++)
      s += (i ? "," : "") + (i == layer ? w : l[i].weight ? fmt::format("{}/{}", l[i].weight, l[i].act) : "fp32");
    f.metadata["layer_bits"] = s;
  };
  expect([&](st::File& f) { set_width(f, 1, "12/8"); }, "metadata \"layer_bits\": layer stage1.0 is 12/8, an integer layer takes 2..8 bits each");
  expect([&](st::File& f) { set_width(f, 1, "4"); }, "metadata \"layer_bits\" holds '4', expected fp32 or W/A (e.g. 4/8)");
  expect([&](st::File& f) { set_width(f, 1, "fp32"); }, "tensor 'stage1.0.weight' is I8 where metadata \"layer_bits\" gives the layer fp32");
  expect([&](st::File& f) { set_width(f, 0, "8/8"); }, "tensor 'stage0.weight' is F32 where metadata \"layer_bits\" gives the layer 8/8");
  expect([&](st::File& f) { set_width(f, 2, "3/8"); }, "outside [-3, 3] of 3-bit weights");  // 4-bit codes, 3 bits said
  expect([](st::File& f) { f.metadata["layer_bits"] = "fp32,4/4"; }, "metadata \"layer_bits\" has 2 entries for the 27 layers");
  expect([](st::File& f) { f.metadata.erase("layer_bits"); }, "metadata \"layer_bits\" is missing");
  expect([](st::File& f) { f.metadata["format_version"] = "3"; }, "format_version 3, this program reads 1 and 2");
  expect([](st::File& f) { f.metadata.erase("format"); }, "not a quantized model");
}

// Version 1 files (before per-layer widths) held one "bits" and "act_bits" for every quantized layer: still read.
TEST_CASE("int8 export: a version 1 file (one bits and act_bits) reads as the same model") {
  const fs::path dir = fresh_temp_dir("int8_version1");
  fs::create_directories(dir);
  const QuantizedSmall q = quantized_small(6, quant::Granularity::channel, false, "stage2.*=fp32");
  const deploy::Int8Model m = quant::export_int8(*q.model, "ptq-minmax", "channel", {});
  const std::string path = edited(m, dir, [](st::File& f) {
    f.metadata.erase("layer_bits");
    f.metadata["format_version"] = "1", f.metadata["bits"] = "6", f.metadata["act_bits"] = "6";
  });
  const deploy::Int8Model r = deploy::load_int8(path);
  REQUIRE(r.layers.size() == m.layers.size());
  for (size_t i = 0; i < m.layers.size(); i++) {
    CAPTURE(m.layers[i].name);
    CHECK(r.layers[i].quantized == m.layers[i].quantized);
    CHECK(r.layers[i].widths == m.layers[i].widths);
    CHECK(r.layers[i].weight_codes == m.layers[i].weight_codes);
  }
  // saved again, it is a version 2 file without the old keys
  deploy::save_int8(path, r);
  const st::File f = st::load(path);
  CHECK(f.metadata.at("format_version") == "2");
  CHECK_FALSE(f.metadata.count("bits"));
  CHECK(f.metadata.at("layer_bits").rfind("fp32,6/6,6/6,6/6,6/6,fp32,", 0) == 0);
  CHECK(deploy::load_int8(path).layers[1].widths == models::LayerBits{6, 6});
  fs::remove_all(dir);
}

TEST_CASE("int8 export: ./ptq's --export option") {
  const quant::PtqOptions o = quant::parse_ptq_options({"--bits", "4", "--export", "m.int8.safetensors"});
  CHECK(o.export_path == "m.int8.safetensors");
  CHECK_THROWS_WITH(quant::parse_ptq_options({"--bits", "8,4", "--export", "m.int8.safetensors"}),
                    has("--export writes one quantized model: give one --bits value"));
}

TEST_CASE("int8 export: more than 8 bits is refused") {
  const QuantizedSmall q = quantized_small(10, quant::Granularity::layer, false);
  CHECK_THROWS_WITH(quant::export_int8(*q.model, "ptq-minmax", "layer", {}),
                    has("layer stage1.0: 10-bit weights: integer export takes at most 8 bits"));
}

// ./infer on ./ptq's export of a ClusterQAT run: the file keeps the packed codes (docs/cluster.md) and
// load_deploy_model makes the integer model from it alone (no model, no run folder), the same as export_int8
// of the QAT model itself.
TEST_CASE("int8 export: ./infer's model from a compressed ClusterQAT file is export_int8 of its QAT model") {
  const ClusterFile c = cluster_file({models::QatMethod::cluster, 4, 8, false, false, layers::StepInit::min_error}, 3, "int8_cluster_file");
  models::Model& m = *c.model;
  const std::string& path = c.path;
  const deploy::Int8Model &loaded = c.loaded, &direct = c.direct;
  CHECK(loaded.method == "qat-cluster");
  CHECK(loaded.metadata.at("cluster_bits") == "4");
  check_same_layers(loaded, direct);

  // with each coded layer's input means (as ./ptq --export writes them): the bias correction of the same
  // means, and it moves biases
  auto train = data::open_cifar10(small_cifar().string(), true);
  data::Loader calib(*train, 32, /*train=*/false, 0, 1);
  const quant::InputMeans means = quant::input_means(m, calib, 1, engine::Device::cpu);
  REQUIRE(means.size() == m.cluster_quantizers().size());
  const std::map<std::string, std::string> md = {{"arch", "repvgg-cifar"}, {"dataset", "cifar10"}, {"num_classes", "10"}};
  st::File f = quant::compress_cluster(m, md, means);
  CHECK(f.tensors.count("stage1.0.input_mean") == 1);
  st::save(path, f);
  CHECK(deploy::decompress_cluster(f, path).tensors.count("stage1.0.input_mean") == 0);  // not a model tensor
  const deploy::Int8Model corrected = deploy::load_deploy_model(path);
  CHECK(loaded.metadata.at("cluster_corrected") == "0");
  CHECK(corrected.metadata.at("cluster_corrected") == std::to_string(means.size()));
  const deploy::Int8Model direct_corrected = quant::export_int8(m, "qat-cluster", "channel", {}, means);
  int moved = 0;
  for (size_t i = 0; i < corrected.layers.size(); i++) {
    CHECK(corrected.layers[i].bias_codes == direct_corrected.layers[i].bias_codes);
    CHECK(corrected.layers[i].weight_codes == direct.layers[i].weight_codes);
    moved += corrected.layers[i].bias_codes != direct.layers[i].bias_codes;
  }
  CHECK(moved == (int)means.size());

  // a mean tensor of the wrong length or dtype, or not finite, is refused naming the file and the tensor
  st::File bad = f;
  bad.tensors["stage1.0.input_mean"] = st::Entry::of({3}, std::vector<float>{1, 2, 3});
  st::save(path, bad);
  CHECK_THROWS_WITH(deploy::load_deploy_model(path),
                    has("file " + path + ": cluster_bias_correction: layer stage1.0: 3 input means for 64 input channels × 9 taps"));
  bad.tensors["stage1.0.input_mean"] = st::Entry::of({1}, std::vector<int32_t>{1});
  st::save(path, bad);
  CHECK_THROWS_WITH(deploy::load_deploy_model(path),
                    has(path + ": tensor 'stage1.0.input_mean' is not F32 [channels × taps]"));
  bad.tensors["stage1.0.input_mean"] = st::Entry::of({1}, std::vector<float>{NAN});
  st::save(path, bad);
  CHECK_THROWS_WITH(deploy::load_deploy_model(path),
                    has(path + ": tensor 'stage1.0.input_mean' holds a non-finite mean"));

  // read from the file alone: a missing key or tensor, a NaN weight, a leftover tensor are named
  bad = f;
  bad.metadata.erase("num_classes");
  st::save(path, bad);
  CHECK_THROWS_WITH(deploy::load_deploy_model(path), has("file " + path + ": metadata \"num_classes\" is missing"));
  bad = f;
  bad.tensors.erase("stage2.1.rbr_reparam.bias");
  st::save(path, bad);
  CHECK_THROWS_WITH(deploy::load_deploy_model(path), has("file " + path + ": tensor 'stage2.1.rbr_reparam.bias' is missing"));
  bad = f;
  bad.tensors["stage0.rbr_reparam.bias"] = st::Entry::of({64}, std::vector<float>(64, NAN));
  st::save(path, bad);
  CHECK_THROWS_WITH(deploy::load_deploy_model(path), has("file " + path + ": tensor 'stage0.rbr_reparam.bias' holds nan at [0]"));
  bad = f;
  bad.tensors["stage1.0.act_quant.init_state"] = st::Entry::of({1}, std::vector<float>{0});
  st::save(path, bad);
  CHECK_THROWS_WITH(deploy::load_deploy_model(path), has("tensor 'stage1.0.act_quant.init_state' is not 1"));
  bad = f;
  bad.tensors["stage9.bias"] = st::Entry::of({1}, std::vector<float>{0});
  st::save(path, bad);
  CHECK_THROWS_WITH(deploy::load_deploy_model(path), has("file " + path + ": tensor 'stage9.bias' is not part of a compressed repvgg-cifar"));
}

// stage0 and the FC quantized too: the image's signed codes (z_x = 2^(A−1)) and the FC's codebook, as
// export_int8 reads them off the model's quantizers
TEST_CASE("int8 export: a compressed ClusterQAT file with stage0 and the FC quantized reads as export_int8 makes it") {
  const ClusterFile c = cluster_file({models::QatMethod::cluster, 3, 6, false, true, layers::StepInit::min_error}, 5, "int8_cluster_first_last");
  const deploy::Int8Model& loaded = c.loaded;
  check_same_layers(loaded, c.direct);
  for (const deploy::Int8Layer& l : loaded.layers) {
    CAPTURE(l.name);
    CHECK(l.quantized);
    CHECK(l.widths == models::LayerBits{8, 6});  // the codes on the s8 grid, the inputs at 6 bits
  }
  CHECK(loaded.layers[0].input_zero_point == 32);
}

// --image: the ImageNet evaluation transform (data::load_eval_image, ImageFolder's own) and the top-5 names
// from the synsets file, on a real imagenet-sample image through a tiny quantized repvgg-a0 of 1000 classes.
TEST_CASE("int8 ./infer --image: ImageFolder's eval tensor and the top-5 synset names in order" *
          skip_unless(have_path(shared_data_dir() + "/imagenet-sample"), "imagenet-sample: not in the shared data")) {
  const std::string dir = shared_data_dir() + "/imagenet-sample", synsets = dir + "/LOC_synset_mapping.txt";
  const std::string image = dir + "/val/n01530575/n01530575_brambling.JPEG";
  data::ImageOptions opt;  // 224, 256
  opt.synsets = synsets;
  data::ImageFolder folder(dir + "/val", opt);
  REQUIRE(folder.path(0) == image);

  // the transform step by step, as ImageFolder's eval was written before load_eval_image
  data::Image img;
  data::decode_image(image, img);
  int rh = 0, rw = 0;
  REQUIRE(data::resize_shorter_dims(img.h, img.w, 256, rh, rw));
  CHECK(std::min(rh, rw) == 256);
  engine::Tensor ref = engine::Tensor::empty({1, 3, 224, 224}), got = engine::Tensor::empty({1, 3, 224, 224});
  data::resize_crop(img.pixels.data(), img.h, img.w, data::Box{0, 0, img.h, img.w}, rh, rw, data::center_crop_box(rh, rw, 224),
                    false, data::kImageNetNorm, ref.f32());
  REQUIRE(folder.load(0, false, 0, got.f32()));
  CHECK(got.to_vector() == ref.to_vector());
  data::load_eval_image(image, opt, img, got.f32());
  CHECK(got.to_vector() == ref.to_vector());

  engine::Rng rng(4);
  models::ArchConfig a = models::arch_config("repvgg-a0");
  a.width_multiplier = {8 / 64.0, 8 / 128.0, 8 / 256.0, 16 / 512.0};
  auto model = std::make_shared<models::RepVGG>(a, rng);
  model->forward(engine::rand_normal({4, 3, 64, 64}, 0.0f, 1.0f, rng));  // BN statistics
  model->eval();
  model->switch_to_deploy();
  data::Loader calib(folder, 8, /*train=*/false, 0, 1);
  quant::QuantConfig c;
  quant::attach_quantizers(*model, c, quant::calibrate(*model, calib, 1, quant::CalibMethod::minmax, engine::Device::cpu));
  deploy::IntegerModel im(quant::export_int8(*model, "ptq-minmax", "layer", {{"dataset", "imagenet"}}));
  const std::vector<float> logits = im.forward(ref).to_vector();
  std::vector<std::string> lines;
  std::ifstream in(synsets);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  REQUIRE(lines.size() == 1000);
  std::vector<int> order(logits.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int x, int y) { return logits[x] > logits[y]; });
  const std::vector<quant::ClassScore> top = quant::classify_image(im, image, 224, 256, synsets);
  REQUIRE(top.size() == 5);
  for (int k = 0; k < 5; k++) {
    CAPTURE(k);
    CHECK(top[k].index == order[k]);
    CHECK(top[k].logit == logits[order[k]]);
    CHECK(top[k].name == lines[order[k]]);
  }
  CHECK(logits[order[0]] > logits[order[5]]);  // not all equal: the order means something
}
