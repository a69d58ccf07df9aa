#include "layers/orepa_block.h"

#include <cmath>

#include "engine/ops.h"

namespace layers {

using engine::Shape;

namespace {

// torch.nn.init.kaiming_uniform_(w, a=0): U(±sqrt(6 / fan_in)), fan_in = dims 1.. of `shape`.
Tensor kaiming_uniform(const Shape& shape, engine::Rng& rng) {
  const float bound = std::sqrt(6.0f / (float)(shape[1] * shape[2] * shape[3]));
  return engine::rand_uniform(shape, -bound, bound, rng);
}

const char* const kBranchParams[] = {"weight_orepa_origin", "weight_orepa_avg_conv", "weight_orepa_pfir_conv",
                                     "weight_orepa_1x1", "weight_orepa_1x1_kxk_idconv1", "weight_orepa_1x1_kxk_conv2",
                                     "weight_orepa_gconv_dw", "weight_orepa_gconv_pw", "vector"};
const char* const kFixed[] = {"weight_orepa_avg_avg", "id_tensor", "weight_orepa_prior"};

}  // namespace

OREPABlock::OREPABlock(int in, int out, int stride, int groups, engine::Rng& rng) : RepBlock(in, out, stride, groups) {
  ENGINE_CHECK(groups >= 1 && in % groups == 0 && out % groups == 0,
               "channels " + std::to_string(in) + " -> " + std::to_string(out) + " do not split into " +
                   std::to_string(groups) + " groups");
  const int64_t o = out, ig = in / groups, t = groups <= 4 ? in : 2 * in;
  auto weight = [&](const char* name, Tensor value) { return register_parameter(name, value, ParamKind::weight); };
  weight_orepa_origin = weight(kBranchParams[0], kaiming_uniform(Shape{o, ig, 3, 3}, rng));
  weight_orepa_avg_conv = weight(kBranchParams[1], kaiming_uniform(Shape{o, ig, 1, 1}, rng));
  weight_orepa_pfir_conv = weight(kBranchParams[2], kaiming_uniform(Shape{o, ig, 1, 1}, rng));
  weight_orepa_1x1 = weight(kBranchParams[3], kaiming_uniform(Shape{o, ig, 1, 1}, rng));
  weight_orepa_1x1_kxk_idconv1 = weight(kBranchParams[4], Tensor::zeros(Shape{t, ig, 1, 1}));
  weight_orepa_1x1_kxk_conv2 = weight(kBranchParams[5], kaiming_uniform(Shape{o, t / groups, 3, 3}, rng));
  weight_orepa_gconv_dw = weight(kBranchParams[6], kaiming_uniform(Shape{(int64_t)in * kExpand, 1, 3, 3}, rng));
  weight_orepa_gconv_pw = weight(kBranchParams[7], kaiming_uniform(Shape{o, (int64_t)in * kExpand / groups, 1, 1}, rng));
  // the scaling layers: one row per branch (origin, avg, prior, 1x1-kxk, 1x1, dws), as the official init
  Tensor v = Tensor::zeros(Shape{6, o});
  const float rows[6] = {0.25f, 0.25f, 0.0f, 0.5f, 1.0f, 0.5f};
  for (int b = 0; b < 6; b++)
    for (int64_t c = 0; c < o; c++) v.f32()[b * o + c] = rows[b];
  vector = register_parameter(kBranchParams[8], v, ParamKind::bn);  // the branch BNs' stand-in
  weight_orepa_avg_avg = register_buffer(kFixed[0], orepa_avg());
  id_tensor = register_buffer(kFixed[1], orepa_id_tensor(t, ig));
  weight_orepa_prior = register_buffer(kFixed[2], orepa_prior(o));
  bn = register_module("bn", std::make_shared<BatchNorm2d>(out));
}

Tensor OREPABlock::merged_kernel() const {
  ENGINE_CHECK(!deployed(), "the block is in deploy form already");
  return merge_orepa({weight_orepa_origin, weight_orepa_avg_conv, weight_orepa_avg_avg, weight_orepa_pfir_conv,
                      weight_orepa_prior, weight_orepa_1x1_kxk_idconv1, id_tensor, weight_orepa_1x1_kxk_conv2,
                      weight_orepa_1x1, weight_orepa_gconv_dw, weight_orepa_gconv_pw, vector},
                     groups);
}

// relu(bn(conv(x, M))): the official forward, one conv on the merged kernel
Tensor OREPABlock::forward_branches(const Tensor& x) {
  return bn_sum_relu({engine::conv2d(x, merged_kernel(), Tensor(), stride, 1, groups)}, {bn.get()}, relu);
}

// The BN's input is conv(x, M): BnStatistics convolves M itself for RepQ-BN (exact) and estimates from M's
// taps for RepQ-BNEst.
KernelBias OREPABlock::kernel_bias(BnStatistics& stats) {
  const Tensor m = merged_kernel();
  return fold_bn(m, stats.of(*bn, m));
}

void OREPABlock::drop_branches() {
  for (const char* name : kBranchParams) remove_parameter(name);
  for (const char* name : kFixed) remove_buffer(name);
  remove_module("bn");
  for (Tensor* t : {&weight_orepa_origin, &weight_orepa_avg_conv, &weight_orepa_pfir_conv, &weight_orepa_1x1,
                    &weight_orepa_1x1_kxk_idconv1, &weight_orepa_1x1_kxk_conv2, &weight_orepa_gconv_dw,
                    &weight_orepa_gconv_pw, &vector, &weight_orepa_avg_avg, &id_tensor, &weight_orepa_prior})
    *t = Tensor();
  bn = nullptr;
}

}  // namespace layers
