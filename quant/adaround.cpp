#include "quant/adaround.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/random.h"
#include "engine/scalar_math.h"
#include "quant/ptq_model.h"

namespace quant {

using namespace engine;

Tensor rectified_sigmoid(const Tensor& v) {  // Eq. 23
  return clamp(add_scalar(mul_scalar(sigmoid(v), kZeta - kGamma), kGamma), 0.f, 1.f);
}

Tensor rounding_regularizer(const Tensor& v, float beta) {  // Eq. 24
  const Tensor sharp = pow(abs(add_scalar(mul_scalar(rectified_sigmoid(v), 2.f), -1.f)), beta);  // |2h − 1|^β
  return add_scalar(mul_scalar(sum_all(sharp), -1.f), (float)v.numel());
}

Tensor soft_quantized_weight(const Tensor& w_floor, const Tensor& v, const Tensor& s, int q_min, int q_max) {  // Eq. 22
  return mul(clamp(add(w_floor, rectified_sigmoid(v)), (float)q_min, (float)q_max), s);
}

AdaRoundTarget parse_adaround_target(const std::string& s) {
  if (s == "quantized") return AdaRoundTarget::quantized_input;
  if (s == "fp32") return AdaRoundTarget::fp32_input;
  throw std::runtime_error("option --adaround-target: '" + s + "' is not quantized or fp32");
}

const char* adaround_target_name(AdaRoundTarget t) { return t == AdaRoundTarget::fp32_input ? "fp32" : "quantized"; }

float initial_v(float r) {
  const double p = ((double)r - kGamma) / (kZeta - kGamma);  // σ(V), in [1/12, 11/12) for r in [0, 1)
  return (float)std::log(p / (1.0 - p));
}

float annealed_beta(int t, const AdaRoundOptions& o) {
  const double start = o.warmup * o.iters;
  if (t <= start) return o.beta_start;
  const double rel = (t - start) / std::max(1.0, o.iters - start);
  return (float)(o.beta_end + (o.beta_start - o.beta_end) * std::max(0.0, 1.0 - rel));
}

namespace {

// One layer's reconstruction data on the kept images, on the host: Q_a(x̂) and the target f_a(W x̂ + b) or
// f_a(W x + b), each image's values contiguous (NCHW).
struct LayerData {
  std::vector<float> input, target;
  Shape input_shape, target_shape;  // of one image
  int64_t images = 0;
  int64_t input_size() const { return input_shape.numel(); }
  int64_t target_size() const { return target_shape.numel(); }
};

Shape image_shape(const Tensor& x) {
  std::vector<int64_t> d;
  for (int i = 1; i < x.dim(); i++) d.push_back(x.size(i));
  return Shape(d);
}

Shape batch_shape(int64_t n, const Shape& image) {
  std::vector<int64_t> d = {n};
  for (int i = 0; i < image.size(); i++) d.push_back(image[i]);
  return Shape(d);
}

// f_a(W x + b): the block's conv and its ReLU (none where the layer has none before a shortcut add), or the FC.
Tensor layer_output(const models::QuantLayer& l, const Tensor& x, const Tensor& w, const Tensor& b) {
  if (l.fc) return linear(x, w, b);
  const Tensor y = conv2d(x, w, b, l.stride, (l.kernel - 1) / 2, l.groups);
  return l.relu && l.residual < 0 ? relu(y) : y;
}

// f_a(W x + b) of every kept image x (`images` of `shape`, contiguous on the host), in batches, without a
// gradient; out_shape: one output's.
std::vector<float> layer_outputs(const models::QuantLayer& l, const std::vector<float>& x, int64_t images, const Shape& shape,
                                 const Tensor& w, const Tensor& b, Device device, Shape& out_shape) {
  NoGradGuard no_grad;
  std::vector<float> out;
  const int64_t chunk = 128, size = shape.numel();
  for (int64_t start = 0; start < images; start += chunk) {
    const int64_t n = std::min(chunk, images - start);
    std::vector<float> xs(x.begin() + start * size, x.begin() + (start + n) * size);
    const Tensor y = layer_output(l, Tensor::from_vector(xs, batch_shape(n, shape)).to(device), w, b);
    out_shape = image_shape(y);
    const std::vector<float> v = y.to_vector();
    out.insert(out.end(), v.begin(), v.end());
  }
  return out;
}

void set_fake_quant(const std::vector<models::QuantLayer>& layers, bool on) {
  for (const models::QuantLayer& l : layers)
    for (layers::Quantizer* q : {l.quant->act.get(), l.quant->weight.get()})
      if (q) q->fake_quant = on;
}

// The input of layer i on the first `images` images of loader, with the model's quantizers on or off.
std::vector<float> observe_input(models::Model& model, const std::vector<models::QuantLayer>& layers, size_t i,
                                 data::Loader& loader, int64_t images, bool quantized, Device device, Shape& shape) {
  std::vector<float> kept;
  int64_t n = 0;
  layers::Quantizer& act = *layers[i].quant->act;
  act.observer = [&](const Tensor& x) {
    const int64_t take = std::min<int64_t>(x.size(0), images - n);
    if (take <= 0) return;
    shape = image_shape(x);
    const std::vector<float> v = x.to_vector();
    kept.insert(kept.end(), v.begin(), v.begin() + take * shape.numel());
    n += take;
  };
  set_fake_quant(layers, quantized);
  forward_batches(model, loader, (int)loader.batches_per_epoch(), device);
  set_fake_quant(layers, true);
  act.observer = nullptr;
  return kept;
}

LayerData layer_data(models::Model& model, const std::vector<models::QuantLayer>& layers, size_t i, data::Loader& loader,
                     int64_t images, AdaRoundTarget target, Device device) {
  const models::QuantLayer& l = layers[i];
  LayerData d;
  d.input = observe_input(model, layers, i, loader, images, true, device, d.input_shape);
  const std::vector<float> x = target == AdaRoundTarget::fp32_input
                                   ? observe_input(model, layers, i, loader, images, false, device, d.input_shape)
                                   : d.input;  // before its own input quantizer
  d.images = (int64_t)d.input.size() / d.input_size();
  ENGINE_CHECK(d.images > 0 && x.size() == d.input.size(), "layer " + l.name + ": no calibration images observed");
  const layers::Quantizer& act = *l.quant->act;  // x̂ through the layer's own input quantizer
  const float s = act.step.to_vector()[0], z = (float)act.zero_point, lo = (float)act.q_min, hi = (float)act.q_max;
  for (float& e : d.input) e = fake_quant_value(e, s, z, lo, hi);
  d.target = layer_outputs(l, x, d.images, d.input_shape, l.weight, l.bias, device, d.target_shape);
  return d;
}

// Adam (Kingma and Ba) on the host, β1 0.9, β2 0.999, ε 1e-8, as torch.optim.Adam.
struct Adam {
  std::vector<float> m, v;
  int t = 0;
  void step(std::vector<float>& p, const std::vector<float>& g, float lr) {
    if (m.empty()) m.assign(p.size(), 0.f), v.assign(p.size(), 0.f);
    t++;
    const double c1 = 1 - std::pow(0.9, t), c2 = 1 - std::pow(0.999, t);
    for (size_t k = 0; k < p.size(); k++) {
      m[k] = 0.9f * m[k] + 0.1f * g[k];
      v[k] = 0.999f * v[k] + 0.001f * g[k] * g[k];
      p[k] -= (float)(lr * (m[k] / c1) / (std::sqrt(v[k] / c2) + 1e-8));
    }
  }
};

// Eq. 25's first term for weight w on all kept images, summed over channels, averaged over images and positions.
double reconstruction_error(const models::QuantLayer& l, const LayerData& d, const Tensor& w, const Tensor& b, Device device) {
  Shape shape;
  const std::vector<float> y = layer_outputs(l, d.input, d.images, d.input_shape, w, b, device, shape);
  double sum = 0;
  for (size_t k = 0; k < y.size(); k++) {
    const double e = (double)y[k] - d.target[k];
    sum += e * e;
  }
  const int64_t channels = d.target_shape[0];
  return sum / ((double)d.images * (double)d.target_size() / (double)channels);
}

AdaRoundLayer adaround_layer(const models::QuantLayer& l, const LayerData& d, const AdaRoundOptions& o, Rng& rng,
                             Device device) {
  const auto t0 = std::chrono::steady_clock::now();
  const layers::Quantizer& wq = *l.quant->weight;
  const std::vector<float> w = l.weight.to_vector(), steps = wq.step.to_vector();
  const int64_t rows = (int64_t)steps.size(), per_row = (int64_t)w.size() / rows;
  std::vector<float> floor_w(w.size()), v(w.size()), nearest(w.size());
  for (size_t k = 0; k < w.size(); k++) {
    const float s = steps[k / per_row], q = w[k] / s;
    floor_w[k] = std::floor(q);
    v[k] = initial_v(q - floor_w[k]);
    nearest[k] = fake_quant_value(w[k], s, 0.f, (float)wq.q_min, (float)wq.q_max);  // what the quantizer computes
  }
  std::vector<int64_t> s_shape(l.weight.dim(), 1);
  s_shape[0] = rows;
  const Tensor s = Tensor::from_vector(steps, Shape(s_shape)).to(device);
  const Tensor w_floor = Tensor::from_vector(floor_w, l.weight.shape()).to(device);
  const Tensor bias = detach(l.quant->quantized_bias(l.bias, false));  // b̂, as the quantized layer runs it
  Tensor v_t = Tensor::from_vector(v, l.weight.shape()).to(device).requires_grad_();

  AdaRoundLayer r{l.name};
  r.nearest_error = reconstruction_error(l, d, Tensor::from_vector(nearest, l.weight.shape()).to(device), bias, device);
  const int64_t batch = std::min<int64_t>(o.batch, d.images);
  std::vector<float> xb(batch * d.input_size()), yb(batch * d.target_size());
  Adam adam;
  for (int t = 0; t < o.iters; t++) {
    for (int64_t b = 0; b < batch; b++) {
      const int64_t i = (int64_t)rng.below((uint64_t)d.images);
      std::memcpy(&xb[b * d.input_size()], &d.input[i * d.input_size()], d.input_size() * sizeof(float));
      std::memcpy(&yb[b * d.target_size()], &d.target[i * d.target_size()], d.target_size() * sizeof(float));
    }
    const Tensor x = Tensor::from_vector(xb, batch_shape(batch, d.input_shape)).to(device);
    const Tensor y = Tensor::from_vector(yb, batch_shape(batch, d.target_shape)).to(device);
    const Tensor out = to_plain(layer_output(l, x, soft_quantized_weight(w_floor, v_t, s, wq.q_min, wq.q_max), bias));
    Tensor loss = mul_scalar(mean_all(square(sub(out, y))), (float)d.target_shape[0]);  // Σ over channels
    if (t >= o.warmup * o.iters) loss = add(loss, mul_scalar(rounding_regularizer(v_t, annealed_beta(t, o)), o.lambda));
    loss.backward();
    adam.step(v, v_t.grad().to_vector(), o.lr);
    v_t.copy_(Tensor::from_vector(v, l.weight.shape()).to(device));
    v_t.grad().fill_(0.f);
  }

  std::vector<float> rounded(w.size());  // ⌊W/s⌋ + [V ≥ 0], on the grid
  int64_t flipped = 0;
  for (size_t k = 0; k < w.size(); k++) {
    const float s_k = steps[k / per_row];
    rounded[k] = std::clamp(floor_w[k] + (v[k] >= 0.f ? 1.f : 0.f), (float)wq.q_min, (float)wq.q_max) * s_k;
    flipped += rounded[k] != nearest[k];
  }
  Tensor(l.weight).copy_(Tensor::from_vector(rounded, l.weight.shape()).to(device));
  r.adaround_error = reconstruction_error(l, d, l.weight, bias, device);
  r.flipped = (double)flipped / (double)w.size();
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

}  // namespace

std::vector<AdaRoundLayer> adaround(models::Model& model, data::Loader& loader, const AdaRoundOptions& o, Device device) {
  ENGINE_CHECK(o.iters > 0 && o.images > 0 && o.batch > 0, "AdaRound needs iterations, images and a batch size above 0");
  const std::vector<models::QuantLayer> layers = model.quant_layers();
  Rng rng(o.seed);
  std::vector<AdaRoundLayer> report;
  for (size_t i = 0; i < layers.size(); i++) {
    if (!layers[i].quant->weight || !layers[i].quant->act) continue;  // FP32, or not uniform
    const LayerData d = layer_data(model, layers, i, loader, o.images, o.target, device);
    report.push_back(adaround_layer(layers[i], d, o, rng, device));
  }
  return report;
}

}  // namespace quant
