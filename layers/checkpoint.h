// Checkpoints: a module's state dict in safetensors (engine/safetensors.h), with PyTorch's names, so
// that Python reads ours and official weights converted to safetensors load into our models.
//   - every parameter and buffer as F32 under its dotted name ("stage1.0.rbr_dense.bn.running_var")
//   - each BN's `num_batches_tracked` as an I64 scalar, as PyTorch writes it (optional on load)
//   - `__metadata__`: the caller's strings (arch, dataset, epoch, ...) and "form": "train" or "deploy"
//   - extra tensors of any dtype (optimizer state "optim.<param name>", RNG state, ...), whose names
//     must not start like the model's (a first name component such as "stage1" or "linear").
#pragma once
#include <map>
#include <string>

#include "engine/safetensors.h"
#include "layers/module.h"

namespace layers {

using Metadata = std::map<std::string, std::string>;

struct Checkpoint {
  Metadata metadata;
  std::map<std::string, st::Entry> extra;  // every tensor of the file that is not the model's
};

st::Entry to_entry(const Tensor& t);       // f32 -> F32, i32 -> I32, ... (copied to the host)
Tensor from_entry(const st::Entry& e);     // F32, I32, U8, I8 -> a cpu tensor

void save_checkpoint(const std::string& path, const Module& model, const Metadata& metadata = {},
                     const std::map<std::string, st::Entry>& extra = {});

// Whether a file holds a model in deploy form (tensors named "...rbr_reparam.*").
bool deploy_form(const st::File& file);

// Loads `path` into `model` (values copied into its tensors, on their device). A deploy-form file
// (names with "rbr_reparam") switches the model to deploy form first. Checks every name, shape and
// dtype, and that no tensor named like the model's is left over; throws naming the file and the first
// mismatch, a non-finite value or a BN running_var that is not positive.
Checkpoint load_checkpoint(const std::string& path, Module& model);

// The state-dict part of it: the tensors `prefix` + name of `file` into `model` (prefix "" for a
// checkpoint; e.g. "param." for a reference file that stores other tensors beside).
void load_state_dict(Module& model, const st::File& file, const std::string& prefix, const std::string& path);

}  // namespace layers
