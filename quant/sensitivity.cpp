#include "quant/sensitivity.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "engine/autograd.h"
#include "engine/ops.h"

namespace quant {

double logit_kl(const std::vector<float>& reference, const std::vector<float>& logits, int64_t classes) {
  ENGINE_CHECK(classes > 0 && reference.size() == logits.size() && reference.size() % classes == 0 && !reference.empty(),
               std::to_string(reference.size()) + " and " + std::to_string(logits.size()) + " logits of " +
                   std::to_string(classes) + " classes");
  auto log_softmax = [&](const float* row, std::vector<double>& out) {
    const double top = *std::max_element(row, row + classes);
    double sum = 0;
    for (int64_t j = 0; j < classes; j++) sum += std::exp(row[j] - top);
    for (int64_t j = 0; j < classes; j++) out[j] = row[j] - top - std::log(sum);
  };
  const int64_t rows = (int64_t)reference.size() / classes;
  std::vector<double> p(classes), q(classes);
  double total = 0;
  for (int64_t i = 0; i < rows; i++) {
    log_softmax(&reference[i * classes], p);
    log_softmax(&logits[i * classes], q);
    for (int64_t j = 0; j < classes; j++) total += std::exp(p[j]) * (p[j] - q[j]);
  }
  return total / rows;
}

// Ranks from 1, ties the mean of their positions.
static std::vector<double> ranks(const std::vector<double>& v) {
  std::vector<size_t> order(v.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return v[a] < v[b]; });
  std::vector<double> r(v.size());
  for (size_t i = 0; i < order.size();) {
    size_t j = i;
    while (j + 1 < order.size() && v[order[j + 1]] == v[order[i]]) j++;
    for (size_t k = i; k <= j; k++) r[order[k]] = (i + j) / 2.0 + 1;
    i = j + 1;
  }
  return r;
}

double spearman(const std::vector<double>& a, const std::vector<double>& b) {
  ENGINE_CHECK(a.size() == b.size(), "spearman: " + std::to_string(a.size()) + " and " + std::to_string(b.size()) + " values");
  if (a.size() < 2) return NAN;
  const std::vector<double> ra = ranks(a), rb = ranks(b);
  const double n = (double)a.size(), mean = (n + 1) / 2;
  double cov = 0, va = 0, vb = 0;
  for (size_t i = 0; i < a.size(); i++) {
    cov += (ra[i] - mean) * (rb[i] - mean);
    va += (ra[i] - mean) * (ra[i] - mean);
    vb += (rb[i] - mean) * (rb[i] - mean);
  }
  return va > 0 && vb > 0 ? cov / std::sqrt(va * vb) : NAN;
}

std::vector<float> logits_of(models::Model& model, const std::vector<Tensor>& images) {
  engine::NoGradGuard no_grad;
  std::vector<float> out;
  for (const Tensor& x : images) {
    const std::vector<float> l = model.forward(x).to_vector();
    out.insert(out.end(), l.begin(), l.end());
  }
  return out;
}

std::vector<LayerSensitivity> layer_sensitivity(models::Model& m, const Calibration& cal, QuantConfig c,
                                                const std::vector<Tensor>& images,
                                                const std::vector<float>& reference) {
  const std::vector<models::QuantLayer> layers = m.quant_layers();
  const int64_t classes = layers.back().out;
  std::vector<LayerSensitivity> out;
  for (size_t i = 0; i < layers.size(); i++) {
    const models::QuantLayer& l = layers[i];
    LayerSensitivity s{l.name, l.identity};
    for (bool alone : {true, false}) {
      const LayerBits on{c.weight_bits, c.act_bits}, off{};
      c.layers.assign(layers.size(), alone ? off : on);
      c.layers[i] = alone ? on : off;
      attach_quantizers(m, c, cal);
      (alone ? s.alone : s.kept) = logit_kl(reference, logits_of(m, images), classes);
    }
    out.push_back(s);
  }
  remove_quantizers(m);
  return out;
}

}  // namespace quant
