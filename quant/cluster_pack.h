// Compressed checkpoints of a ClusterQAT model (docs/cluster.md has the layout): each cluster-quantized
// layer's weight as packed b-bit codes into its 2^b-entry codebook, the rest of the deploy state dict as
// it is. Decoding gives the QAT model's deploy weights bit for bit (each a codebook entry), so its logits
// are the QAT model's in eval. And the model's size in bytes stored in FP32, uniform B-bit or cluster B-bit.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "engine/safetensors.h"
#include "models/repvgg.h"

namespace quant {

// Code i in bits [i·b, (i+1)·b) of the byte stream, least significant bit first: ceil(n·b / 8) bytes.
std::vector<uint8_t> pack_codes(const std::vector<uint8_t>& codes, int bits);
std::vector<uint8_t> unpack_codes(const std::vector<uint8_t>& packed, int bits, size_t n);

// The deploy-form cluster model as a compressed file, `metadata` added to its own. `input_means`
// (quant::input_means, keyed "stage1.0", ..., "linear") go in as "<layer>.input_mean" F32 [C·9] (the FC [C]) for the coded
// layers: the E[x] of the integer model's bias correction (quant::cluster_bias_correction), measured at export.
st::File compress_cluster(models::RepVGG& deployed, const std::map<std::string, std::string>& metadata,
                          const std::map<std::string, std::vector<float>>& input_means = {});
// Those means, keyed by layer; throws naming `path` and the tensor for one that is not 1-D F32 or not finite.
std::map<std::string, std::vector<float>> cluster_input_means(const st::File& f, const std::string& path);
bool is_compressed(const st::File& f);  // metadata "format" is "cluster-codes"
// The state dict the codes stand for: each "<layer>.weight_codes" decoded through "<layer's quantizer>.codebook"
// into "<layer>.weight" [shape of "<layer>.weight_shape"]. Throws naming `path` and the tensor on a codebook
// of the wrong length, codes of the wrong size or a code beyond the codebook.
st::File decompress_cluster(const st::File& f, const std::string& path);

// Bytes to store the deploy model's weights and biases: FP32 (4 a value); uniform B-bit (each quantized
// layer's weights packed at B bits, one f32 step, its bias as int32, its input's f32 step; FP32 layers at 4
// a value); cluster B-bit (the same with a 2^B-entry f32 codebook for the step and a float bias).
// quantize_first_last: stage0 and the FC count as quantized too.
struct ModelBytes {
  int64_t fp32 = 0, uniform = 0, cluster = 0;
};
ModelBytes model_bytes(const models::ArchConfig& arch, int bits, bool quantize_first_last);

}  // namespace quant
