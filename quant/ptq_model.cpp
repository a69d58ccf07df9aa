#include "quant/ptq_model.h"

#include <functional>
#include <map>
#include <tuple>
#include <utility>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/scalar_math.h"

namespace quant {

using layers::Codes;
using layers::Quantizer;

LayerBits bits_of(size_t layer, size_t n, const QuantConfig& c) {
  if (!c.layers.empty()) return c.layers.at(layer);
  if (c.quantize_first_last || (layer != 0 && layer + 1 != n)) return {c.weight_bits, c.act_bits};
  return {};
}

// The model's quantized layers, each block in deploy form.
static std::vector<models::QuantLayer> deployed_layers(models::Model& m) {
  std::vector<models::QuantLayer> layers = m.quant_layers();
  for (const models::QuantLayer& l : layers)
    ENGINE_CHECK(l.weight.defined(), "block " + l.name + " is not in deploy form: call switch_to_deploy() first");
  return layers;
}

std::vector<int> layer_widths(const models::Model& m) {
  ENGINE_CHECK(m.qat().has_value(), "not a QAT model");
  const size_t n = m.blocks().size() + 1;
  std::vector<int> widths;
  for (size_t i = 0; i < n; i++) widths.push_back(m.qat()->traits().full_precision ? 0 : m.qat()->layer(i, n).weight);
  return widths;
}

void remove_quantizers(models::Model& m) {
  for (const models::QuantLayer& l : m.quant_layers()) l.quant->set(nullptr, nullptr);
}

std::pair<int, size_t> forward_batches(models::Model& m, data::Loader& loader, int batches, engine::Device device) {
  // In training mode a ClusterQAT layer would move its codebook a k-means step each batch (and an LSQ
  // quantizer could initialize): statistics are taken of the model as it stands.
  ENGINE_CHECK(!m.training(), "the model must be in eval mode to observe its activations");
  engine::NoGradGuard no_grad;
  loader.start_epoch(0);
  Tensor x, y;
  std::pair<int, size_t> run{0, 0};
  while (run.first < batches) {
    const data::Batch* b = loader.next();
    if (!b) break;
    data::to_tensors(*b, device, x, y);
    m.forward(x);
    run.first++;
    run.second += b->n;
  }
  return run;
}

Calibration calibrate(models::Model& m, data::Loader& loader, int batches, CalibMethod method, engine::Device device) {
  const std::vector<models::QuantLayer> layers = deployed_layers(m);
  Calibration c;
  const size_t draws = method == CalibMethod::minmax ? 0 : 16384;  // min-max needs no sample
  c.observers.reserve(layers.size());
  for (size_t i = 0; i < layers.size(); i++) {
    c.observers.emplace_back(draws, i);
    auto probe = std::make_shared<Quantizer>(8, Codes::unsigned_act);  // observes; passes its input through
    probe->fake_quant = false;
    probe->observer = [obs = &c.observers.back()](const Tensor& x) { obs->observe(x); };
    layers[i].quant->set(probe, nullptr);
  }
  std::tie(c.batches, c.images) = forward_batches(m, loader, batches, device);
  remove_quantizers(m);
  return c;
}

// sum[kh * k + kw] += Σ over the output positions (oh, ow) of x[oh·s + kh − p, ow·s + kw − p], 0 outside:
// what tap (kh, kw) of a k x k, padding-p (p = (k − 1) / 2), stride-s conv reads from one plane x [h, w].
// rows: k·w scratch.
static void add_tap_sums(const float* x, int64_t h, int64_t w, int k, int stride, double* sum, std::vector<double>& rows) {
  const int p = (k - 1) / 2;
  const int64_t oh = (h - 1) / stride + 1, ow = (w - 1) / stride + 1;
  rows.assign(k * w, 0.0);  // rows[kh][iw]: Σ over oh of x[oh·s + kh − p, iw]
  for (int kh = 0; kh < k; kh++)
    for (int64_t o = 0; o < oh; o++)
      if (const int64_t ih = o * stride + kh - p; ih >= 0 && ih < h)
        for (int64_t iw = 0; iw < w; iw++) rows[kh * w + iw] += x[ih * w + iw];
  for (int kh = 0; kh < k; kh++)
    for (int kw = 0; kw < k; kw++)
      for (int64_t o = 0; o < ow; o++)
        if (const int64_t iw = o * stride + kw - p; iw >= 0 && iw < w) sum[kh * k + kw] += rows[kh * w + iw];
}

std::map<std::string, std::vector<float>> input_means(models::Model& m, data::Loader& loader, int batches,
                                                      engine::Device device) {
  const std::vector<models::QuantLayer> layers = deployed_layers(m);
  const size_t n = layers.size();
  std::vector<std::vector<double>> sums(n);
  std::vector<int64_t> counts(n, 0);  // products summed into each entry: images × output positions
  // each quantizer's watchers: a shared one (ResNet's block input) serves its readers, each with its conv's taps
  // (and sees the input once per reader: every watcher counts it that often, so the means stay)
  std::map<Quantizer*, std::vector<std::function<void(const Tensor&)>>> watchers;
  for (size_t i = 0; i < n; i++) {
    Quantizer* q = layers[i].quant->act.get();
    if (!q) continue;
    const int stride = layers[i].fc ? 0 : layers[i].stride, k = layers[i].kernel;  // stride 0: the FC
    watchers[q].push_back([&sum = sums[i], &count = counts[i], q, stride, k](const Tensor& x) {
      std::vector<float> v = x.to_vector();  // NCHW order, whatever the layout
      const float s = q->step.to_vector()[0], z = (float)q->zero_point, lo = (float)q->q_min, hi = (float)q->q_max;
      for (float& e : v) e = engine::fake_quant_value(e, s, z, lo, hi);
      const int64_t batch = x.size(0), channels = x.size(1);
      if (stride == 0) {  // the FC: [N, C]
        sum.resize(channels, 0.0);
        for (size_t k = 0; k < v.size(); k++) sum[k % channels] += v[k];
        count += batch;
        return;
      }
      const int64_t h = x.size(2), w = x.size(3);
      sum.resize(channels * k * k, 0.0);
      std::vector<double> rows;
      for (int64_t b = 0; b < batch; b++)
        for (int64_t c = 0; c < channels; c++) add_tap_sums(&v[(b * channels + c) * h * w], h, w, k, stride, &sum[c * k * k], rows);
      count += batch * ((h - 1) / stride + 1) * ((w - 1) / stride + 1);
    });
  }
  for (auto& w : watchers)
    w.first->observer = [&fns = w.second](const Tensor& x) {
      for (auto& f : fns) f(x);
    };
  forward_batches(m, loader, batches, device);
  std::map<std::string, std::vector<float>> means;
  for (size_t i = 0; i < n; i++) {
    Quantizer* q = layers[i].quant->act.get();
    if (!q) continue;
    q->observer = nullptr;
    ENGINE_CHECK(counts[i] > 0, "layer " + layers[i].name + ": no input observed for its means");
    for (double v : sums[i]) means[layers[i].name].push_back(float(v / counts[i]));
  }
  return means;
}

std::vector<Range> attach_quantizers(models::Model& m, const QuantConfig& c, const Calibration& cal) {
  const std::vector<models::QuantLayer> layers = deployed_layers(m);
  const size_t n = layers.size();
  ENGINE_CHECK(cal.observers.size() == n, std::to_string(cal.observers.size()) + " observers for " + std::to_string(n) + " layers");
  std::vector<Range> ranges(n);
  for (size_t i = 0; i < n; i++) {
    const LayerBits b = bits_of(i, n, c);
    if (b.weight == 0) {
      layers[i].quant->set(nullptr, nullptr);
      continue;
    }
    ENGINE_CHECK(!cal.observers[i].empty(), "layer " + layers[i].name + ": no calibration activations observed");
    const Tensor& w = layers[i].weight;
    const std::vector<float> scales = weight_scales(w, b.weight, c.granularity);
    auto weight = std::make_shared<Quantizer>(b.weight, Codes::weight, (int64_t)scales.size());
    weight->set_step(scales);
    weight->to(w.device());
    if (auto shared = models::shared_input(layers, i, b.act)) {  // its input's quantizer is its first reader's
      layers[i].quant->set(nullptr, weight);
      layers[i].quant->share_input(shared);
      ranges[i] = ranges[models::input_owner(layers, i)];
      continue;
    }
    ranges[i] = calibrate(cal.observers[i], c.calib, b.act);
    const AffineQuant a = asymmetric_params(ranges[i].lo, ranges[i].hi, b.act);
    auto act = std::make_shared<Quantizer>(b.act, Codes::unsigned_act);  // codes [0, 2^B - 1], and z
    act->set_step({a.scale});
    act->zero_point = a.zero_point;
    act->to(w.device());
    layers[i].quant->set(act, weight);
  }
  return ranges;
}

}  // namespace quant
