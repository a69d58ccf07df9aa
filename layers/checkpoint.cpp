#include "layers/checkpoint.h"

#include <fmt/format.h>

#include <charconv>
#include <cmath>
#include <set>

#include "layers/layers.h"

namespace layers {

using engine::DType;

static st::DType st_dtype(DType d) {
  switch (d) {
    case DType::f32: return st::DType::F32;
    case DType::i32: return st::DType::I32;
    case DType::u8: return st::DType::U8;
    case DType::i8: return st::DType::I8;
  }
  engine::fail("unknown dtype");
}

st::Entry to_entry(const Tensor& t) {
  Tensor host = t.to(engine::Device::cpu);
  st::Entry e{st_dtype(t.dtype()), t.shape().vec(), {}};
  e.bytes.resize(host.nbytes());
  if (!e.bytes.empty()) std::memcpy(e.bytes.data(), host.raw(), e.bytes.size());
  return e;
}

Tensor from_entry(const st::Entry& e) {
  DType d;
  switch (e.dtype) {
    case st::DType::F32: d = DType::f32; break;
    case st::DType::I32: d = DType::i32; break;
    case st::DType::U8: d = DType::u8; break;
    case st::DType::I8: d = DType::i8; break;
    default: engine::fail(std::string("no engine dtype for ") + st::dtype_name(e.dtype));
  }
  ENGINE_CHECK((int)e.shape.size() <= engine::Shape::max_dims, "shape " + st::cut(st::shape_str(e.shape)) + " has too many dims");
  Tensor t = Tensor::empty(engine::Shape(e.shape), d);
  if (!e.bytes.empty()) std::memcpy(t.raw(), e.bytes.data(), e.bytes.size());
  return t;
}

// The BNs of the model and the names of their num_batches_tracked.
static std::vector<std::pair<std::string, BatchNorm2d*>> batch_norms(Module& model) {
  std::vector<std::pair<std::string, BatchNorm2d*>> out;
  for (auto& [name, m] : model.modules())
    if (auto* bn = dynamic_cast<BatchNorm2d*>(m)) out.push_back({(name.empty() ? "" : name + ".") + "num_batches_tracked", bn});
  return out;
}

static std::string first_component(const std::string& name) { return name.substr(0, name.find('.')); }

// The first name components of the model's tensors ("stage0", "linear", ...).
static std::set<std::string> model_roots(const Module& model) {
  std::set<std::string> roots;
  for (auto& t : model.state_dict()) roots.insert(first_component(t.name));
  return roots;
}

void save_checkpoint(const std::string& path, const Module& model, const Metadata& metadata,
                     const std::map<std::string, st::Entry>& extra) {
  st::File file;
  file.metadata = metadata;
  bool deploy = false;
  for (auto& t : model.state_dict()) {
    file.tensors[t.name] = to_entry(t.tensor);
    deploy |= t.name.find("rbr_reparam.") != std::string::npos;
  }
  file.metadata["form"] = deploy ? "deploy" : "train";
  for (auto& [name, bn] : batch_norms(const_cast<Module&>(model)))
    file.tensors[name] = st::Entry::of<int64_t>({}, std::vector<int64_t>{bn->num_batches_tracked});
  const std::set<std::string> roots = model_roots(model);
  for (auto& [name, e] : extra) {
    ENGINE_CHECK(!roots.count(first_component(name)),
                 path + ": extra tensor '" + name + "' is named like the model's tensors");
    file.tensors[name] = e;
  }
  st::save(path, file);
}


// Refuses a non-finite value, and a BN running_var that is not positive (its rsqrt would be NaN or inf).
static void check_values(const st::Entry& e, const std::string& name, const std::string& path) {
  std::vector<float> v = e.to_vector<float>();
  const bool var = name.ends_with("running_var");
  for (size_t i = 0; i < v.size(); i++)
    if (!std::isfinite(v[i]) || (var && !(v[i] > 0)))
      engine::fail(fmt::format("file {}: tensor '{}' has {} at index {}; expected {}", path, name, v[i], i,
                               var ? "positive finite variances" : "finite values"));
}

void load_state_dict(Module& model, const st::File& file, const std::string& prefix, const std::string& path) {
  std::set<std::string> expected;
  std::vector<NamedTensor> tensors = model.state_dict();
  for (const NamedTensor& t : tensors)  // before any is written
    if (t.tensor.frozen())
      engine::fail(fmt::format("file {}: tensor '{}' of the model is frozen (Module::freeze, for inference): load "
                               "the file into a model before freezing it", path, prefix + t.name));
  for (NamedTensor& t : tensors) {
    const st::Entry& e = st::require(file, prefix + t.name, st::DType::F32, t.tensor.shape().vec(), path);
    check_values(e, prefix + t.name, path);
    t.tensor.copy_(from_entry(e).to(t.tensor.device()));
    expected.insert(prefix + t.name);
  }
  for (auto& [name, bn] : batch_norms(model)) {
    auto it = file.tensors.find(prefix + name);
    if (it == file.tensors.end()) continue;
    bn->num_batches_tracked = st::require(file, prefix + name, st::DType::I64, {}, path).to_vector<int64_t>()[0];
    expected.insert(prefix + name);
  }
  const std::set<std::string> roots = model_roots(model);
  for (auto& [name, e] : file.tensors) {
    if (name.rfind(prefix, 0) != 0 || expected.count(name)) continue;
    ENGINE_CHECK(!roots.count(first_component(name.substr(prefix.size()))),
                 "file " + path + ": tensor '" + st::cut(name) + "' is not in the model");
  }
}

bool deploy_form(const st::File& file) {
  for (auto& [name, e] : file.tensors)
    if (name.find("rbr_reparam.") != std::string::npos) return true;
  return false;
}

Checkpoint load_checkpoint(const std::string& path, Module& model) {
  st::File file = st::load(path);
  if (deploy_form(file)) model.switch_to_deploy();
  load_state_dict(model, file, "", path);
  Checkpoint c;
  c.metadata = file.metadata;
  const std::set<std::string> roots = model_roots(model);
  for (auto& [name, e] : file.tensors)
    if (!roots.count(first_component(name))) c.extra[name] = e;
  return c;
}

}  // namespace layers
