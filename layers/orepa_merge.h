// OREPA's merge (Hu et al., CVPR 2022, "Online Convolutional Re-parameterization"; official
// JUGGHM/OREPA_CVPR2022 blocks.py, class OREPA, weight_gen): the block's six linear branches, each scaled
// per output channel by its row of `vector` (the paper's linear scaling layers, which replace the branch
// BNs: block linearization), squeezed into one 3x3 kernel each training step (block squeezing), so that
// training runs one conv, then the block's single BN. With I the block's input channels, g its groups,
// T the 1x1-kxk branch's internal channels and E the dws branch's expansion (8):
//
//   branch (vector row)  official tensors                          kernel [O, I/g, 3, 3]
//   origin      (0)  weight_orepa_origin [O, I/g, 3, 3]            W
//   avg         (1)  weight_orepa_avg_conv [O, I/g, 1, 1],         1x1 conv, then 3x3 average pooling:
//                    weight_orepa_avg_avg [3, 3] (1/9, buffer)     A[o, i] · avg[h, w]
//   prior       (2)  weight_orepa_pfir_conv [O, I/g, 1, 1],        1x1 conv, then output channel o's fixed
//                    weight_orepa_prior [O, 3, 3] (buffer)         frequency (DCT) filter: P[o, i] · prior[o, h, w]
//   1x1-kxk     (3)  weight_orepa_1x1_kxk_idconv1 [T, I/g, 1, 1]   1x1 conv (identity-initialized: idconv1 +
//                    + id_tensor (buffer),                         id_tensor), then 3x3 conv, composed:
//                    weight_orepa_1x1_kxk_conv2 [O, T/g, 3, 3]     Σ_t conv2[o, t, h, w] · conv1[t, i]
//   1x1         (4)  weight_orepa_1x1 [O, I/g, 1, 1]               zero-padded to 3x3 (pad_to_3x3)
//   dws         (5)  weight_orepa_gconv_dw [E I, 1, 3, 3],         linear depthwise-separable conv: depthwise
//                    weight_orepa_gconv_pw [O, E I/g, 1, 1]        3x3 expanding each channel E times, then a
//                                                                  1x1 (groups g): dwsc2full
//
//   merge_orepa = Σ_b vector[b, o] · kernel_b          (scaling layers, then the parallel branches' sum)
//
// Every step is an engine op with autograd, so gradients reach every branch tensor and `vector`.
#pragma once
#include "engine/tensor.h"

namespace layers {

using engine::Tensor;

struct OrepaWeights {
  Tensor origin;               // [O, I/g, 3, 3]
  Tensor avg_conv, avg_avg;    // [O, I/g, 1, 1], [3, 3]
  Tensor pfir_conv, prior;     // [O, I/g, 1, 1], [O, 3, 3]
  Tensor idconv1, id_tensor;   // [T, I/g, 1, 1] each
  Tensor conv2;                // [O, T/g, 3, 3]
  Tensor conv_1x1;             // weight_orepa_1x1 [O, I/g, 1, 1]
  Tensor gconv_dw, gconv_pw;   // [E I, 1, 3, 3], [O, E I/g, 1, 1]
  Tensor vector;               // [6, O], the rows in the table's order
};

// The merged 3x3 kernel [O, I/g, 3, 3] of the six scaled branches (official weight_gen).
Tensor merge_orepa(const OrepaWeights& w, int groups);

// The 1x1-kxk branch's two convs composed (OREPA block squeezing of a sequential structure; official
// weight_gen's 'ti,othw->oihw' / 'gti,gothw->goihw'): conv1 [T, I/g, 1, 1] then conv2 [O, T/g, 3, 3], both in
// g groups -> [O, I/g, 3, 3], k[o, i] = Σ_{t ∈ group(o)} conv2[o, t] · conv1[t, i].
Tensor compose_1x1_kxk(const Tensor& conv1, const Tensor& conv2, int groups);

// The linear depthwise-separable branch as one kernel (official dwsc2full(dw, pw, in_channels, groups)),
// I = in_channels:
// dw [E I, 1, 3, 3] (depthwise: channel i's E filters at rows i E ... i E + E − 1), then pw [O, E I/g, 1, 1]
// in g groups -> [O, I/g, 3, 3]. The official code reads pw's rows in the order o' g + c for output
// channel c O/g + o' (its view(O/g, g, ...)); kept, so that official weights give the official kernel.
Tensor dws_to_full(const Tensor& dw, const Tensor& pw, int64_t in_channels, int groups);

// The fixed tensors, as the official constructor makes them:
Tensor orepa_prior(int64_t out_channels);                        // fre_init: [O, 3, 3]
Tensor orepa_avg();                                              // weight_orepa_avg_avg: 1/9 [3, 3]
Tensor orepa_id_tensor(int64_t internal, int64_t in_per_group);  // id_tensor: 1 at [t, t % (I/g)], [T, I/g, 1, 1]

}  // namespace layers
