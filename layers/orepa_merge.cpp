#include "layers/orepa_merge.h"

#include <cmath>
#include <numbers>

#include "engine/ops.h"
#include "layers/reparam.h"

namespace layers {

using namespace engine;

namespace {

// The n x n identity [n, n] on `device`.
Tensor eye(int64_t n, Device device) {
  Tensor host = Tensor::zeros(Shape{n, n});
  for (int64_t i = 0; i < n; i++) host.f32()[i * n + i] = 1.0f;
  return host.to(device);
}

// a [P, Q] -> aᵀ [Q, P], differentiable: linear(I_Q, a) = I_Q aᵀ (the engine has no transpose op).
Tensor transposed(const Tensor& a) { return linear(eye(a.size(1), a.device()), a, Tensor()); }

// vector[b, :] [O] of vector [B, O]: Σ_b' vector[b', :] · [b' == b] (the engine has no slicing op).
Tensor row(const Tensor& vector, int b) {
  Tensor one_hot = Tensor::zeros(Shape{vector.size(0), 1});
  one_hot.f32()[b] = 1.0f;
  return sum(mul(vector, one_hot.to(vector.device())), {0});
}

// The linear scaling layer of branch b (OREPA's block linearization): kernel [O, ...] · vector[b, o].
Tensor scaled(const Tensor& kernel, const Tensor& vector, int b) {
  return mul(kernel, reshape(row(vector, b), Shape{kernel.size(0), 1, 1, 1}));
}

}  // namespace

Tensor compose_1x1_kxk(const Tensor& conv1, const Tensor& conv2, int groups) {
  const int64_t t = conv1.size(0), ig = conv1.size(1), o = conv2.size(0), g = groups;
  ENGINE_CHECK(conv1.dim() == 4 && conv1.size(2) == 1 && conv1.size(3) == 1 && t % g == 0,
               "1x1 conv " + conv1.str() + " in " + std::to_string(g) + " groups");
  ENGINE_CHECK(conv2.dim() == 4 && conv2.size(1) * g == t && o % g == 0 && conv2.size(2) == 3 && conv2.size(3) == 3,
               "3x3 conv " + conv2.str() + " after " + conv1.str() + " in " + std::to_string(g) + " groups");
  // conv2 as a batch of O images of T channels, zero outside row o's group (block diagonal) [O, T, 3, 3]
  Tensor images = conv2;
  if (g > 1) {
    Tensor mask = reshape(eye(g, conv2.device()), Shape{g, 1, g, 1, 1});
    images = reshape(mul(reshape(conv2, Shape{g, o / g, 1, t / g, 9}), mask), Shape{o, t, 3, 3});
  }
  // a 1x1 conv of those images with conv1ᵀ [I/g, T, 1, 1]: Σ_t images[o, t] · conv1[t, i]
  Tensor k = conv2d(images, reshape(transposed(reshape(conv1, Shape{t, ig})), Shape{ig, t, 1, 1}), Tensor());
  return to_plain(k);
}

Tensor dws_to_full(const Tensor& dw, const Tensor& pw, int64_t in_channels, int groups) {
  const int64_t o = pw.size(0), g = groups, ipg = in_channels / g;
  ENGINE_CHECK(dw.dim() == 4 && dw.size(1) == 1 && dw.size(2) == 3 && dw.size(3) == 3 && in_channels % g == 0 &&
                   dw.size(0) % in_channels == 0,
               "depthwise 3x3 kernel " + dw.str() + " of " + std::to_string(in_channels) + " channels in " +
                   std::to_string(g) + " groups");
  const int64_t e = dw.size(0) / in_channels, k = e * ipg;
  ENGINE_CHECK(pw.dim() == 4 && pw.size(1) == k && pw.size(2) == 1 && pw.size(3) == 1 && o % g == 0,
               "pointwise kernel " + pw.str() + " after " + dw.str() + " in " + std::to_string(g) + " groups");
  // pw's rows in the official order, rows[c, o'] = pw[o' g + c]: [g, O/g, E I/g]
  Tensor rows = reshape(pw, Shape{g, o / g, k});
  if (g > 1) rows = sum(mul(reshape(pw, Shape{1, o / g, g, k}), reshape(eye(g, pw.device()), Shape{g, 1, g, 1})), {2});
  // W[c, o', i] = Σ_e rows[c, o', i E + e] · dw[(c I/g + i) E + e]: [g, O/g, I/g, E, 9] summed over E
  Tensor w = sum(mul(reshape(rows, Shape{g, o / g, ipg, e, 1}), reshape(dw, Shape{g, 1, ipg, e, 9})), {3});
  return reshape(w, Shape{o, ipg, 3, 3});
}

Tensor orepa_prior(int64_t out_channels) {
  Tensor prior = Tensor::zeros(Shape{out_channels, 3, 3});
  const double half = out_channels / 2.0;  // official half_fg: the first half vary along h, the rest along w
  for (int64_t i = 0; i < out_channels; i++)
    for (int h = 0; h < 3; h++)
      for (int w = 0; w < 3; w++)
        prior.f32()[(i * 3 + h) * 3 + w] =
            (float)(i < half ? std::cos(std::numbers::pi * (h + 0.5) * (i + 1) / 3)
                             : std::cos(std::numbers::pi * (w + 0.5) * (i + 1 - half) / 3));
  return prior;
}

Tensor orepa_avg() { return Tensor::full(Shape{3, 3}, 1.0f / 9.0f); }

Tensor orepa_id_tensor(int64_t internal, int64_t in_per_group) {
  Tensor id = Tensor::zeros(Shape{internal, in_per_group, 1, 1});
  for (int64_t t = 0; t < internal; t++) id.f32()[t * in_per_group + t % in_per_group] = 1.0f;
  return id;
}

Tensor merge_orepa(const OrepaWeights& w, int groups) {
  const int64_t o = w.origin.size(0), ig = w.origin.size(1);
  ENGINE_CHECK(w.origin.dim() == 4 && w.origin.size(2) == 3 && w.origin.size(3) == 3, "3x3 kernel " + w.origin.str());
  const Shape one{o, ig, 1, 1};
  ENGINE_CHECK(w.avg_conv.shape() == one && w.pfir_conv.shape() == one && w.conv_1x1.shape() == one,
               "1x1 kernels " + w.avg_conv.str() + ", " + w.pfir_conv.str() + ", " + w.conv_1x1.str() + " beside " +
                   w.origin.str());
  ENGINE_CHECK(w.avg_avg.shape() == (Shape{3, 3}) && w.prior.shape() == (Shape{o, 3, 3}),
               "average filter " + w.avg_avg.str() + ", prior " + w.prior.str());
  ENGINE_CHECK(w.vector.shape() == (Shape{6, o}), "scaling vectors " + w.vector.str() + " for " + w.origin.str());
  const Tensor& v = w.vector;
  Tensor kernel = scaled(w.origin, v, 0);
  // a 1x1 conv, then a fixed filter per tap: the average pooling, and output channel o's prior (official
  // 'oi,hw->oihw', 'oi,ohw->oihw')
  kernel = add(kernel, scaled(mul(w.avg_conv, reshape(w.avg_avg, Shape{1, 1, 3, 3})), v, 1));
  kernel = add(kernel, scaled(mul(w.pfir_conv, reshape(w.prior, Shape{o, 1, 3, 3})), v, 2));
  kernel = add(kernel, scaled(compose_1x1_kxk(add(w.idconv1, w.id_tensor), w.conv2, groups), v, 3));
  kernel = add(kernel, scaled(pad_to_3x3(w.conv_1x1), v, 4));
  return add(kernel, scaled(dws_to_full(w.gconv_dw, w.gconv_pw, ig * groups, groups), v, 5));
}

}  // namespace layers
