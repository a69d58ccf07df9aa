// A non-uniform weight quantizer as a module: ClusterQAT (Niu et al., arXiv 2402.07200, Sec. 3,
// Algorithm 2). A layer's weights M take the values of a codebook of 2^b entries that k-means keeps on
// M's distribution, instead of a uniform grid:
//
//   line 2   each epoch: codebook = linspace(min M, max M, 2^b)                     reset_codebook
//   line 5   each step: every weight to its nearest entry                           assign_nearest
//   line 6   "Map": each entry the mean of the weights assigned to it (k-means);    update_centroids
//            an entry no weight is assigned to keeps its value
//   line 8   the forward uses the entries: M̂ = codebook[code(M)]                     codebook_values
//   line 10  the backward passes straight through: d M̂ / d M = 1                    engine::straight_through
//
// Ties (a weight exactly as far from two entries, in float): to the entry of lower value; among equal
// entries, to the lowest index. Lines 5 and 6 run in training; in eval (and deploy) the weights are
// assigned to the codebook as it is, nothing updated. The codebook is a buffer (checkpoints keep it, so a
// run resumed mid-epoch continues bit for bit); `init_state` is 1 once it holds a reset. The trainer asks
// for the line-2 reset at each epoch start (request_reset); it runs in the next training forward, on the
// M that forward computes (models::RepVGG folds the running BN statistics for cluster: M is the deploy kernel).
// The assignment and the update run on the host (the kernel is copied there and back).
#pragma once
#include <cstdint>
#include <vector>

#include "layers/module.h"
#include "layers/quantizer.h"

namespace layers {

class ClusterQuantizer : public Module {
 public:
  explicit ClusterQuantizer(int bits);  // bits 1..8
  Tensor forward(const Tensor& w) override;  // M̂ (training: lines 2 if requested, 5, 6, 8, 10)

  bool initialized() const;
  void request_reset() { reset_requested_ = true; }
  // Each weight's code (index into the codebook) by the current codebook: line 5 alone.
  std::vector<uint8_t> codes(const Tensor& w) const;

  const int bits;
  Tensor codebook;    // [2^bits], a buffer
  Tensor init_state;  // [1], a buffer: 1 once the codebook was reset

 private:
  bool reset_requested_ = false;
};

// Algorithm 2 line 2: 2^bits entries evenly from min(w) to max(w) (all equal to it for a constant w).
std::vector<float> reset_codebook(const std::vector<float>& w, int bits);
// Line 5: the index of each w's nearest entry, ties as documented above. codebook: at most 256 entries.
std::vector<uint8_t> assign_nearest(const std::vector<float>& w, const std::vector<float>& codebook);
// Line 6: each entry the mean (in double) of the w assigned to it; an empty entry keeps its value.
void update_centroids(const std::vector<float>& w, const std::vector<uint8_t>& codes, std::vector<float>& codebook);
// Line 8: codebook[codes[i]] for each i.
std::vector<float> codebook_values(const std::vector<uint8_t>& codes, const std::vector<float>& codebook);
// How many codes hold each entry.
std::vector<int64_t> entry_counts(const std::vector<uint8_t>& codes, size_t entries);


}  // namespace layers
