#include "interop/onnx.h"

#include <fmt/format.h>

#include <map>

#include "interop/protobuf.h"

namespace interop {

using pb::Message;

// onnx.proto field numbers of the messages written here.
namespace f {
enum Model { ir_version = 1, producer_name = 2, producer_version = 3, model_doc = 6, graph = 7, opset_import = 8, metadata_props = 14 };
enum OpsetId { opset_domain = 1, opset_version = 2 };
enum Entry { key = 1, value = 2 };
enum Graph { node = 1, graph_name = 2, initializer = 5, graph_input = 11, graph_output = 12 };
enum Node { node_input = 1, node_output = 2, node_name = 3, op_type = 4, attribute = 5 };
enum Attribute { attr_name = 1, attr_i = 3, attr_ints = 8, attr_type = 20 };
enum Tensor { dims = 1, data_type = 2, tensor_name = 8, raw_data = 9 };
enum ValueInfo { vi_name = 1, vi_type = 2, vi_doc = 3 };
enum Type { tensor_type = 1 };
enum TypeTensor { elem_type = 1, shape = 2 };
enum Shape { dim = 1 };
enum Dim { dim_value = 1, dim_param = 2 };
}  // namespace f
constexpr int kFloat = 1;                 // TensorProto.DataType.FLOAT
constexpr int kAttrInt = 2, kAttrInts = 7;  // AttributeProto.AttributeType

static Message attr_int(const std::string& name, int64_t v) {
  return Message().bytes(f::attr_name, name).int64(f::attr_i, v).varint(f::attr_type, kAttrInt);
}

static Message attr_ints(const std::string& name, const std::vector<int64_t>& v) {
  Message m;
  m.bytes(f::attr_name, name);
  for (int64_t x : v) m.int64(f::attr_ints, x);
  return m.varint(f::attr_type, kAttrInts);
}

static Message node(const std::string& op, const std::string& name, const std::vector<std::string>& inputs,
                    const std::string& output, const std::vector<Message>& attrs = {}) {
  Message m;
  for (auto& in : inputs) m.bytes(f::node_input, in);
  m.bytes(f::node_output, output).bytes(f::node_name, name).bytes(f::op_type, op);
  for (auto& a : attrs) m.message(f::attribute, a);
  return m;
}

static Message initializer(const std::string& name, const engine::Tensor& t) {
  Message m;
  for (int d = 0; d < t.dim(); d++) m.int64(f::dims, t.size(d));
  m.varint(f::data_type, kFloat).bytes(f::tensor_name, name);
  const std::vector<float> v = t.to_vector();
  return m.bytes(f::raw_data, std::string_view((const char*)v.data(), v.size() * sizeof(float)));
}

// A float32 tensor value; a dimension is a size, or a name (symbolic) where the size is 0.
static Message value_info(const std::string& name, const std::vector<std::pair<int64_t, std::string>>& dims,
                          const std::string& doc) {
  Message shape;
  for (auto& [size, symbol] : dims)
    shape.message(f::dim, size > 0 ? Message().int64(f::dim_value, size) : Message().bytes(f::dim_param, symbol));
  Message tensor;
  tensor.varint(f::elem_type, kFloat).message(f::shape, shape);
  return Message().bytes(f::vi_name, name).message(f::vi_type, Message().message(f::tensor_type, tensor)).bytes(f::vi_doc, doc);
}

std::string repvgg_to_onnx(const models::RepVGG& model, const OnnxOptions& opt) {
  std::map<std::string, engine::Tensor> state;
  for (auto& [name, t] : model.state_dict()) state[name] = t;
  Message graph;
  graph.bytes(f::graph_name, model.arch.name);

  // The blocks in order, named as their state-dict prefixes: "stage0", "stage1.0", ...
  std::vector<std::string> names;
  const auto specs = models::block_specs(model.arch);
  for (size_t s = 0; s < specs.size(); s++)
    for (size_t j = 0; j < specs[s].size(); j++) names.push_back(s == 0 ? "stage0" : fmt::format("stage{}.{}", s, j));
  std::string x = "input";
  for (size_t i = 0; i < model.blocks().size(); i++) {
    const layers::RepBlock& b = *model.blocks()[i];
    const std::string& prefix = names.at(i);
    if (!b.deployed()) throw std::runtime_error(fmt::format("ONNX export of {}: block {} is not in deploy form", model.arch.name, prefix));
    const layers::Conv2d& c = *b.rbr_reparam;
    const int64_t k = c.weight.size(2), s = c.stride, p = c.padding;
    graph.message(f::initializer, initializer(prefix + ".rbr_reparam.weight", c.weight));
    graph.message(f::initializer, initializer(prefix + ".rbr_reparam.bias", c.bias));
    graph.message(f::node, node("Conv", prefix + ".conv", {x, prefix + ".rbr_reparam.weight", prefix + ".rbr_reparam.bias"}, prefix + ".conv",
                                {attr_ints("kernel_shape", {k, k}), attr_ints("strides", {s, s}), attr_ints("pads", {p, p, p, p}),
                                 attr_ints("dilations", {1, 1}), attr_int("group", c.groups)}));
    graph.message(f::node, node("Relu", prefix + ".relu", {prefix + ".conv"}, prefix + ".relu"));
    x = prefix + ".relu";
  }
  graph.message(f::initializer, initializer("linear.weight", state.at("linear.weight")));
  graph.message(f::initializer, initializer("linear.bias", state.at("linear.bias")));
  graph.message(f::node, node("GlobalAveragePool", "gap", {x}, "gap"));
  graph.message(f::node, node("Flatten", "flatten", {"gap"}, "flatten", {attr_int("axis", 1)}));
  graph.message(f::node, node("Gemm", "linear", {"flatten", "linear.weight", "linear.bias"}, "logits", {attr_int("transB", 1)}));

  const data::Normalize& n = opt.norm;
  const std::string norm = fmt::format("mean [{}, {}, {}], std [{}, {}, {}]", n.mean[0], n.mean[1], n.mean[2], n.std[0], n.std[1], n.std[2]);
  const int64_t hw = opt.image_size, classes = state.at("linear.weight").size(0);
  graph.message(f::graph_input, value_info("input", {{0, "batch"}, {3, ""}, {hw, ""}, {hw, ""}},
                                           fmt::format("NCHW float32 RGB, each channel (value / 255 - mean) / std with the {} {}", opt.norm_name, norm)));
  graph.message(f::graph_output, value_info("logits", {{0, "batch"}, {classes, ""}}, "class scores before softmax"));

  Message model_proto;
  model_proto.int64(f::ir_version, 7).bytes(f::producer_name, "repq").bytes(f::producer_version, "1")
      .bytes(f::model_doc, fmt::format("{} deploy form{}", model.arch.name, opt.source.empty() ? "" : " from " + opt.source))
      .message(f::graph, graph)
      .message(f::opset_import, Message().bytes(f::opset_domain, "").int64(f::opset_version, 13))
      .message(f::metadata_props, Message().bytes(f::key, "normalization").bytes(f::value, opt.norm_name + " " + norm));
  return model_proto.str();
}

}  // namespace interop
