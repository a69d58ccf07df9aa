// Compressed checkpoints of a ClusterQAT model (docs/cluster.md has the layout): each cluster-quantized
// layer's weight as packed b-bit codes into its 2^b-entry codebook, the rest of the deploy state dict as
// it is. Decoding gives the QAT model's deploy weights bit for bit (each a codebook entry), so its logits
// are the QAT model's in eval. Written by quant::compress_cluster (quant/deploy_export.h); read here, straight
// into the integer model, or decoded into the state dict (./ptq's evaluation of the file). And the model's
// size in bytes stored in FP32, uniform B-bit or cluster B-bit.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "engine/safetensors.h"
#include "deploy/int8_model.h"
#include "models/arch.h"

namespace deploy {

// Code i in bits [i·b, (i+1)·b) of the byte stream, least significant bit first: ceil(n·b / 8) bytes.
std::vector<uint8_t> pack_codes(const std::vector<uint8_t>& codes, int bits);
std::vector<uint8_t> unpack_codes(const std::vector<uint8_t>& packed, int bits, size_t n);

extern const char* const kClusterFormat;     // metadata "format" of a compressed file: "cluster-codes"
extern const char* const kInputMeanSuffix;   // "<layer>.input_mean": F32 [C·9] (the FC [C]), the E[x] of the bias correction
// The codebook of a coded weight: "stage1.0.rbr_reparam" -> "stage1.0.weight_quant.codebook", "linear" ->
// "linear_weight_quant.codebook".
std::string codebook_name(const std::string& layer);

// Those means, keyed by layer; throws naming `path` and the tensor for one that is not 1-D F32 or not finite.
std::map<std::string, std::vector<float>> cluster_input_means(const st::File& f, const std::string& path);
bool is_compressed(const st::File& f);  // metadata "format" is kClusterFormat
// The integer model of a compressed file, read from it alone (its metadata names the arch, the classes, the
// bits): each coded layer's entries put on the s8 grid of its output channels (set_cluster_codes) and its
// bias corrected by the file's input means; the layers without codes FP32. As quant::export_int8 makes it from
// the QAT model the file was written from, value for value. Throws naming `path` and the tensor or key.
Int8Model int8_from_cluster_file(const st::File& f, const std::string& path);
// Any file ./ptq --export writes: an int8 file (load_int8) or a compressed one (int8_from_cluster_file).
Int8Model load_deploy_model(const std::string& path);

// The state dict the codes stand for: each "<layer>.weight_codes" decoded through "<layer's quantizer>.codebook"
// into "<layer>.weight" [shape of "<layer>.weight_shape"]. Throws naming `path` and the tensor on a codebook
// of the wrong length, codes of the wrong size or a code beyond the codebook.
st::File decompress_cluster(const st::File& f, const std::string& path);

// Bytes to store the deploy model's weights and biases: FP32 (4 a value); uniform B-bit (each quantized
// layer's weights packed at B bits, one f32 step, its bias as int32, its input's f32 step; FP32 layers at 4
// a value); cluster B-bit (the same with a 2^B-entry f32 codebook for the step and a float bias).
struct ModelBytes {
  int64_t fp32 = 0, uniform = 0, cluster = 0;
};
// From each layer's weight width (stage0 ... the FC; 0: FP32).
ModelBytes model_bytes(const models::ArchConfig& arch, const std::vector<int>& widths);

}  // namespace deploy
