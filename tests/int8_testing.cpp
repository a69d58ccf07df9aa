#include "tests/int8_testing.h"

#include "models/layer_bits.h"

#include "datasets/cifar10.h"
#include "datasets/loader.h"
#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/optim.h"
#include "engine/random.h"
#include "layers/checkpoint.h"
#include "tests/testing.h"

std::filesystem::path small_cifar() {
  static const std::filesystem::path data = make_cifar(fresh_temp_dir("int8_small"), 64, 32);
  return data;
}

void save_random_repvgg_cifar(const std::filesystem::path& path) {
  engine::Rng rng(3);
  models::RepVGG m(models::arch_config("repvgg-cifar"), rng);
  m.forward(engine::rand_normal({4, 3, 32, 32}, 0, 1, rng));
  m.eval();
  layers::save_checkpoint(path.string(), m, {{"arch", "repvgg-cifar"}, {"dataset", "cifar10"}});
}

QuantizedSmall quantized_small(int bits, quant::Granularity g, bool quantize_first_last, const std::string& layer_spec,
                               const std::string& arch) {
  const std::filesystem::path data = small_cifar();
  engine::Rng rng(5);
  QuantizedSmall q;
  q.model = models::make_model(arch.empty() ? models::cifar_config(models::BlockType::repvgg, 8) : models::arch_config(arch), rng);
  q.model->forward(engine::rand_normal({16, 3, 32, 32}, 0.0f, 1.0f, rng));  // BN statistics
  q.model->eval();
  q.model->switch_to_deploy();
  auto train = data::open_cifar10(data.string(), true);
  auto test = data::open_cifar10(data.string(), false);
  data::Loader calib(*train, 64, /*train=*/false, 0, 1), val(*test, 32, false, 0, 1);
  const quant::Calibration cal = quant::calibrate(*q.model, calib, 4, quant::CalibMethod::minmax, engine::Device::cpu);
  quant::QuantConfig c;
  c.weight_bits = c.act_bits = bits;
  c.granularity = g;
  c.quantize_first_last = quantize_first_last;
  if (!layer_spec.empty()) {
    std::vector<std::string> names;
    std::vector<quant::LayerBits> base;
    for (const models::QuantLayer& l : q.model->quant_layers()) names.push_back(l.name);
    for (size_t i = 0; i < names.size(); i++) base.push_back(quant::bits_of(i, names.size(), c));
    c.layers = models::apply_layer_spec(layer_spec, names, base, bits);
  }
  quant::attach_quantizers(*q.model, c, cal);
  val.start_epoch(0);
  engine::Tensor labels;
  data::to_tensors(*val.next(), engine::Device::cpu, q.images, labels);
  return q;
}

QuantizedSmall cluster_small(int bits, int act_bits, bool quantize_first_last) {
  engine::Rng rng(5);
  QuantizedSmall q;
  q.model = std::make_shared<models::RepVGG>(models::cifar_config(models::BlockType::repvgg, 8), rng);
  q.model->forward(engine::rand_normal({16, 3, 32, 32}, 0.0f, 1.0f, rng));  // BN statistics
  q.model->set_qat({models::QatMethod::cluster, bits, act_bits, false, quantize_first_last, layers::StepInit::min_error});
  auto test = data::open_cifar10(small_cifar().string(), false);
  data::Loader val(*test, 32, /*train=*/false, 0, 1);
  val.start_epoch(0);
  engine::Tensor labels;
  data::to_tensors(*val.next(), engine::Device::cpu, q.images, labels);
  std::vector<engine::Tensor> params;
  for (const layers::Param& p : q.model->parameters()) params.push_back(p.tensor);
  engine::SGD sgd({engine::ParamGroup{params, 0.0f}}, 0.01f);
  for (int step = 0; step < 2; step++) {  // codebooks reset and moved by k-means, steps initialized
    sgd.zero_grad();
    engine::cross_entropy(q.model->forward(q.images), labels).backward();
    sgd.step();
  }
  q.model->eval();
  q.model->switch_to_deploy();
  return q;
}
