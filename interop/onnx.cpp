#include "interop/onnx.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
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
constexpr int kFloat = 1, kUint8 = 2, kInt8 = 3, kInt32 = 6;  // TensorProto.DataType
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

// A tensor of `type` from its raw little-endian bytes (an x86 host's own layout).
template <class T>
static Message initializer(const std::string& name, int type, const std::vector<int64_t>& dims, const std::vector<T>& v) {
  Message m;
  for (int64_t d : dims) m.int64(f::dims, d);
  m.varint(f::data_type, type).bytes(f::tensor_name, name);
  return m.bytes(f::raw_data, std::string_view((const char*)v.data(), v.size() * sizeof(T)));
}

static Message initializer(const std::string& name, const engine::Tensor& t) {
  std::vector<int64_t> dims;
  for (int d = 0; d < t.dim(); d++) dims.push_back(t.size(d));
  return initializer(name, kFloat, dims, t.to_vector());
}

// --- QDQ (opset 13 QuantizeLinear / DequantizeLinear, x = (q - z) · s per tensor or per axis) -------------
// Each quantizer becomes nodes and initializers named after it ("stage1.0.act_quant.scale", ...); the value
// a quantized conv or Gemm sees is the quantizer's x̂ (layers/quantizer.h).

// Checks the quantizer can be exported; the element type of its codes.
static int code_type(const layers::Quantizer& q, const std::string& name) {
  if (!q.initialized())
    throw std::runtime_error(fmt::format("QDQ export: {}'s step was never set (a QAT run sets it at its first batch)", name));
  if (q.bits > 8)
    throw std::runtime_error(fmt::format("QDQ export: {} has {}-bit codes; opset 13's QuantizeLinear holds 8 at most", name, q.bits));
  return q.codes == layers::Codes::unsigned_act ? kUint8 : kInt8;
}

template <class T>
static Message code_initializer(const std::string& name, int type, const std::vector<int64_t>& dims, const std::vector<int>& codes) {
  return initializer(name, type, dims, std::vector<T>(codes.begin(), codes.end()));
}

// x -> [Clip to the codes' range where it is narrower than the 8-bit container's] -> QuantizeLinear ->
// DequantizeLinear. Returns the dequantized value's name.
static std::string act_qdq(Message& graph, const std::string& name, const layers::Quantizer& q, const std::string& x) {
  const int type = code_type(q, name);
  const std::vector<float> s = q.step.to_vector();
  if (s.size() != 1) throw std::runtime_error(fmt::format("QDQ export: {} has {} steps; an activation has one", name, s.size()));
  graph.message(f::initializer, initializer(name + ".scale", kFloat, {}, s));
  graph.message(f::initializer, type == kUint8 ? code_initializer<uint8_t>(name + ".zero_point", type, {}, {q.zero_point})
                                               : code_initializer<int8_t>(name + ".zero_point", type, {}, {q.zero_point}));
  std::string in = x;
  if (q.bits < 8) {
    graph.message(f::initializer, initializer(name + ".clip_min", kFloat, {}, std::vector<float>{float(q.q_min - q.zero_point) * s[0]}));
    graph.message(f::initializer, initializer(name + ".clip_max", kFloat, {}, std::vector<float>{float(q.q_max - q.zero_point) * s[0]}));
    graph.message(f::node, node("Clip", name + ".clip", {x, name + ".clip_min", name + ".clip_max"}, name + ".clip"));
    in = name + ".clip";
  }
  graph.message(f::node, node("QuantizeLinear", name + ".q", {in, name + ".scale", name + ".zero_point"}, name + ".q"));
  graph.message(f::node, node("DequantizeLinear", name + ".dq", {name + ".q", name + ".scale", name + ".zero_point"}, name + ".dq"));
  return name + ".dq";
}

// The weight w [O, ...] as its int8 codes clamp(round(w / s), q_min, q_max), rounded here (so that codes
// narrower than 8 bits keep their range), then DequantizeLinear, per axis 0 with a per-channel step.
// Returns the dequantized weight's name.
static std::string weight_dq(Message& graph, const std::string& name, const layers::Quantizer& q, const engine::Tensor& w) {
  code_type(q, name);  // the checks: weight codes are int8
  const std::vector<float> s = q.step.to_vector(), v = w.to_vector();
  const int64_t out = w.size(0), per = w.numel() / out;
  if (s.size() != 1 && (int64_t)s.size() != out)
    throw std::runtime_error(fmt::format("QDQ export: {} has {} steps for {} output channels", name, s.size(), out));
  std::vector<int> codes(v.size());
  for (int64_t o = 0; o < out; o++) {
    const float step = s[s.size() > 1 ? o : 0];
    for (int64_t i = o * per; i < (o + 1) * per; i++)
      codes[i] = (int)std::clamp(std::nearbyint(v[i] / step), (float)q.q_min, (float)q.q_max);
  }
  std::vector<int64_t> dims, sdims;
  for (int d = 0; d < w.dim(); d++) dims.push_back(w.size(d));
  if (s.size() > 1) sdims = {out};
  graph.message(f::initializer, code_initializer<int8_t>(name + ".codes", kInt8, dims, codes));
  graph.message(f::initializer, initializer(name + ".scale", kFloat, sdims, s));
  graph.message(f::initializer, code_initializer<int8_t>(name + ".zero_point", kInt8, sdims, std::vector<int>(s.size(), 0)));
  graph.message(f::node, node("DequantizeLinear", name + ".dq", {name + ".codes", name + ".scale", name + ".zero_point"}, name + ".dq",
                              {attr_int("axis", 0)}));
  return name + ".dq";
}

// The bias b [O] as its int32 codes of step s_x · s_w (layers::bias_codes, what our eval forward adds), zero
// point 0, then DequantizeLinear per axis 0.
static std::string bias_dq(Message& graph, const std::string& name, const engine::Tensor& b, const layers::Quantizer& act,
                           const layers::Quantizer& weight) {
  const engine::BiasCodes c = layers::bias_codes(b, act, weight, "QDQ export: " + name);
  const std::vector<int64_t> dims = {(int64_t)c.codes.size()};
  graph.message(f::initializer, initializer(name + ".codes", kInt32, dims, c.codes));
  graph.message(f::initializer, initializer(name + ".scale", kFloat, dims, c.steps));
  graph.message(f::initializer, initializer(name + ".zero_point", kInt32, dims, std::vector<int32_t>(c.codes.size(), 0)));
  graph.message(f::node, node("DequantizeLinear", name + ".dq", {name + ".codes", name + ".scale", name + ".zero_point"}, name + ".dq",
                              {attr_int("axis", 0)}));
  return name + ".dq";
}

// The inputs of a conv or Gemm: x, weight and bias, each through its QDQ nodes where `opt.qdq` and the layer
// has the quantizer (the bias where it has both).
// A layer whose Q_a is another's (layers::LayerQuantizers::share_input) takes x as that one's QDQ output.
static std::vector<std::string> layer_inputs(Message& graph, const OnnxOptions& opt, const std::string& prefix,
                                             const layers::LayerQuantizers& quant, std::string x, const std::string& w_name,
                                             const engine::Tensor& w, const std::string& b_name, const engine::Tensor& b) {
  const layers::Quantizer* act = opt.qdq ? quant.act.get() : nullptr;
  const layers::Quantizer* weight = opt.qdq ? quant.weight.get() : nullptr;
  if (act && !quant.input_shared()) x = act_qdq(graph, prefix + ".act_quant", *act, x);
  const std::string wq = weight ? weight_dq(graph, prefix + ".weight_quant", *weight, w) : w_name;
  if (!weight) graph.message(f::initializer, initializer(w_name, w));
  const std::string bq = act && weight ? bias_dq(graph, prefix + ".bias_quant", b, *act, *weight) : b_name;
  if (!(act && weight)) graph.message(f::initializer, initializer(b_name, b));
  return {x, wq, bq};
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

std::string to_onnx(models::Model& model, const OnnxOptions& opt) {
  Message graph;
  graph.bytes(f::graph_name, model.arch.name);

  // The layers in order, named as their state-dict prefixes ("stage0", "stage1.0", ... | "conv1",
  // "layer1.0.conv1", ...): Conv [Add of the shortcut] [Relu] [MaxPool], each reading its source's output; then
  // the pooling and the FC. out[i]: layer i's output; read[i]: what its readers' convs take (after their QDQ).
  const std::vector<models::QuantLayer> layers = model.quant_layers();
  std::vector<std::string> out(layers.size()), read(layers.size());
  for (size_t i = 0; i + 1 < layers.size(); i++) {
    const models::QuantLayer& l = layers[i];
    if (!l.weight.defined()) throw std::runtime_error(fmt::format("ONNX export of {}: block {} is not in deploy form", model.arch.name, l.name));
    const std::string x = l.source < 0 ? "input" : out[l.source];
    const int64_t k = l.weight.size(2), s = l.stride, p = (k - 1) / 2;
    std::vector<std::string> in = layer_inputs(graph, opt, l.name, *l.quant, x, l.name + ".rbr_reparam.weight", l.weight,
                                               l.name + ".rbr_reparam.bias", l.bias);
    if (l.quant->input_shared() && opt.qdq) in[0] = read[l.source];  // the first reader's QDQ of x
    if (l.source >= 0 && read[l.source].empty()) read[l.source] = in[0];
    std::string y = l.name + ".conv";
    graph.message(f::node, node("Conv", y, in, y,
                                {attr_ints("kernel_shape", {k, k}), attr_ints("strides", {s, s}), attr_ints("pads", {p, p, p, p}),
                                 attr_ints("dilations", {1, 1}), attr_int("group", l.groups)}));
    if (l.residual >= 0) {  // the shortcut as the model adds it: its writer's output as its readers take it
      const std::string r = read[l.residual].empty() ? out[l.residual] : read[l.residual];
      graph.message(f::node, node("Add", l.name + ".add", {y, r}, l.name + ".add"));
      y = l.name + ".add";
    }
    if (l.relu) {
      graph.message(f::node, node("Relu", l.name + ".relu", {y}, l.name + ".relu"));
      y = l.name + ".relu";
    }
    if (l.max_pool) {
      graph.message(f::node, node("MaxPool", l.name + ".maxpool", {y}, l.name + ".maxpool",
                                  {attr_ints("kernel_shape", {3, 3}), attr_ints("strides", {2, 2}), attr_ints("pads", {1, 1, 1, 1})}));
      y = l.name + ".maxpool";
    }
    out[i] = y;
  }
  const models::QuantLayer& fc = layers.back();
  graph.message(f::node, node("GlobalAveragePool", "gap", {out[fc.source]}, "gap"));
  graph.message(f::node, node("Flatten", "flatten", {"gap"}, "flatten", {attr_int("axis", 1)}));
  const std::vector<std::string> in = layer_inputs(graph, opt, fc.name, *fc.quant, "flatten", fc.name + ".weight", fc.weight,
                                                   fc.name + ".bias", fc.bias);
  graph.message(f::node, node("Gemm", fc.name, in, "logits", {attr_int("transB", 1)}));

  const data::Normalize& n = opt.norm;
  const std::string norm = fmt::format("mean [{}, {}, {}], std [{}, {}, {}]", n.mean[0], n.mean[1], n.mean[2], n.std[0], n.std[1], n.std[2]);
  const int64_t hw = opt.image_size, classes = fc.out;
  graph.message(f::graph_input, value_info("input", {{0, "batch"}, {3, ""}, {hw, ""}, {hw, ""}},
                                           fmt::format("NCHW float32 RGB, each channel (value / 255 - mean) / std with the {} {}", opt.norm_name, norm)));
  graph.message(f::graph_output, value_info("logits", {{0, "batch"}, {classes, ""}}, "class scores before softmax"));

  Message model_proto;
  model_proto.int64(f::ir_version, 7).bytes(f::producer_name, "repq").bytes(f::producer_version, "1")
      .bytes(f::model_doc, fmt::format("{} deploy form{}{}", model.arch.name, opt.qdq ? ", quantized (QDQ)" : "",
                                       opt.source.empty() ? "" : " from " + opt.source))
      .message(f::graph, graph)
      .message(f::opset_import, Message().bytes(f::opset_domain, "").int64(f::opset_version, 13))
      .message(f::metadata_props, Message().bytes(f::key, "normalization").bytes(f::value, opt.norm_name + " " + norm));
  return model_proto.str();
}

}  // namespace interop
