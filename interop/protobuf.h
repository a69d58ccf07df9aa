// A protocol-buffers wire-format writer (https://protobuf.dev/programming-guides/encoding/), enough to
// write ONNX models (interop/onnx.h) and TensorBoard events (interop/event_writer.h).
//
// Why our own and not libprotobuf + libonnx: we only *write*, about ten message types (ONNX's Model,
// Graph, Node, Attribute, Tensor, ValueInfo, Type, Shape; TensorBoard's Event, Summary), a few fields
// each. The wire format for that is four encodings and fits in this file; the libraries would add two
// build dependencies, generated code, a protoc step and a version-matching problem (Debian's libonnx-dev
// is ONNX 1.12, pinned to its libprotobuf) to write a few fields. Reading stays with the Python tools
// (onnx.checker, onnxruntime, tensorboard) in the tests, which is where the format is checked.
//
//   tag      = varint(field << 3 | wire type)
//   varint   wire type 0: 7 bits a byte, least significant first, high bit = more (int32/int64/bool/enum;
//            a negative int64 is its two's complement: 10 bytes)
//   fixed64  wire type 1: 8 bytes little-endian (double)
//   len      wire type 2: varint length, then the bytes (string, bytes, nested message, packed repeated)
//   fixed32  wire type 5: 4 bytes little-endian (float)
// A repeated field is the field written once per element.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>

namespace pb {

// One message's bytes, its fields appended in the order written.
class Message {
 public:
  Message& varint(int field, uint64_t v);
  Message& int64(int field, int64_t v) { return varint(field, (uint64_t)v); }
  Message& fixed32(int field, uint32_t v);
  Message& float32(int field, float v);
  Message& fixed64(int field, uint64_t v);
  Message& float64(int field, double v);
  Message& bytes(int field, std::string_view v);        // string or bytes
  Message& message(int field, const Message& m) { return bytes(field, m.str()); }

  const std::string& str() const { return buf_; }

 private:
  void tag(int field, int wire_type);
  std::string buf_;
};

void append_varint(std::string& out, uint64_t v);
void append_le(std::string& out, uint64_t v, int nbytes);  // little-endian, the low nbytes bytes

}  // namespace pb
