// What the tests of each re-parameterized block (tests/test_acb.cpp, test_orepa.cpp) share: the block against
// its PyTorch twin's reference file, its CIFAR arch's sizes and deploy form, and the programs downstream of
// ./train on that arch. A new block's test calls these with its own block, arch and tensor names.
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "layers/repvgg_block.h"
#include "models/arch.h"

namespace block_testing {

// The shapes every block is tested at: stride 1 and 2, groups 1 and 2.
struct Case {
  const char* name;
  int in, out, stride, groups;
};
inline constexpr Case kCases[] = {{"8->8 stride 1", 8, 8, 1, 1}, {"8->16 stride 2", 8, 16, 2, 1},
                                  {"8->8 groups 2", 8, 8, 1, 2}, {"8->16 stride 2 groups 2", 8, 16, 2, 2}};

// y, x's gradient and every parameter's gradient of loss = Σ y · w.
struct Run {
  engine::Tensor y, gx;
  std::vector<engine::Tensor> grads;
};
Run run_block(layers::RepBlock& b, const engine::Tensor& x0, const engine::Tensor& w);

// A block of the given shape in its training form, BNs randomized, the same for equal seeds.
using MakeSeeded = std::function<std::shared_ptr<layers::RepBlock>(int in, int out, int stride, int groups, uint64_t seed)>;
// In eval, at every kCases shape: the training form, merged mode (running statistics) and the deploy conv give
// the same output within 1e-5. -> the worst relative errors of deploy and merged.
std::pair<double, double> check_eval_modes(const MakeSeeded& make);
// In training, at every kCases shape: merged mode with batch folding (RepQ-BN without quantizers) is the training
// form: output, input gradient and each of the `params` parameters' gradients, the `buffers` buffers after the
// step, every BN's step count. -> the worst relative errors of the output and of the gradients.
std::pair<double, double> check_merged_training(const MakeSeeded& make, size_t params, size_t buffers);

// max |a − b| / max |b| (a NaN in a counts as the worst)
double rel_err(const std::vector<float>& a, const std::vector<float>& b);

// tests/reference/<file> (make_model_refs.py, from the block's twin in repvgg_torch.py): training forward, loss,
// every gradient, running statistics, eval output, deploy kernel and output, each within 1e-5 of the twin's.
// `make` builds the block from the file's in/out channels, stride and groups; the training part runs the
// block's training form, or merged mode with batch folding (RepQ-BN without quantizers) when merged_mode.
// -> the worst tensor's max |ours − PyTorch| / max |PyTorch|.
using MakeBlock = std::function<std::unique_ptr<layers::RepBlock>(int in, int out, int stride, int groups)>;
double check_against_twin(const std::string& file, bool merged_mode, const MakeBlock& make);

// The block's CIFAR arch at width 8: its parameter counts are models::model_size's in both forms, no layer
// has an identity branch, the deploy form gives the training form's eval logits, and --oabn-k is refused.
// -> the deploy form's max |logit difference| / max |logit|.
double check_cifar_deploy(models::BlockType block);

// ./train --arch `arch` (a RepVGG-family or a ResNet arch; full precision; `tensor` must be in its checkpoint), a
// run of each QAT method from it, ./ptq's int8 and compressed exports, ./ptq --sensitivity (no identity-branch layer), two integer widths
// in one int8 file, ./infer of each file, ./inspect, ./export --onnx and --qdq; one epoch of 8 made-up images
// each. --oabn-k (no identity BN) and --custom-l2 (RepVGG's) are refused.
void check_programs(const std::string& arch, const std::string& tensor);

}  // namespace block_testing
