// Interop: the protobuf wire-format writer against bytes that Python wrote.
#include <fmt/format.h>

#include "interop/protobuf.h"
#include "tests/testing.h"

using pb::Message;

namespace {

std::string hex(const std::string& bytes) {
  std::string s;
  for (unsigned char c : bytes) s += fmt::format("{:02x}", c);
  return s;
}

}  // namespace

TEST_CASE("protobuf writer: the encoding guide's examples and bytes that Python's protobuf and onnx wrote") {
  // https://protobuf.dev/programming-guides/encoding/
  CHECK(hex(Message().varint(1, 150).str()) == "089601");
  CHECK(hex(Message().bytes(2, "testing").str()) == "120774657374696e67");
  CHECK(hex(Message().message(3, Message().varint(1, 150)).str()) == "1a03089601");
  // google.protobuf.wrappers_pb2: UInt64Value(value=2**64-1), DoubleValue(value=1.5), FloatValue(value=-2.25)
  CHECK(hex(Message().varint(1, UINT64_MAX).str()) == "08ffffffffffffffffff01");
  CHECK(hex(Message().float64(1, 1.5).str()) == "09000000000000f83f");
  CHECK(hex(Message().float32(1, -2.25f).str()) == "0d000010c0");
  // onnx.helper.make_attribute("pads", [1, 1, 1, 1]): name, ints (unpacked, as proto2 writes them), type INTS
  Message pads;
  pads.bytes(1, "pads");
  for (int i = 0; i < 4; i++) pads.int64(8, 1);
  CHECK(hex(pads.varint(20, 7).str()) == "0a04706164734001400140014001a00107");
  // make_attribute("axis", -1): a negative int64 takes ten bytes
  CHECK(hex(Message().bytes(1, "axis").int64(3, -1).varint(20, 2).str()) == "0a046178697318ffffffffffffffffff01a00102");
  // make_tensor_value_info("input", FLOAT, ["batch", 3], doc_string="d"): four levels of nesting
  Message shape;
  shape.message(1, Message().bytes(2, "batch")).message(1, Message().int64(1, 3));
  Message type = Message().message(1, Message().varint(1, 1).message(2, shape));
  CHECK(hex(Message().bytes(1, "input").message(2, type).bytes(3, "d").str()) ==
        "0a05696e70757412130a110801120d0a07120562617463680a0208031a0164");
}
