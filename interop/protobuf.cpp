#include "interop/protobuf.h"

#include <cstring>

namespace pb {

void append_varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back((char)((v & 0x7f) | 0x80));
    v >>= 7;
  }
  out.push_back((char)v);
}

void append_le(std::string& out, uint64_t v, int nbytes) {
  for (int i = 0; i < nbytes; i++) out.push_back((char)(v >> (8 * i) & 0xff));
}

void Message::tag(int field, int wire_type) { append_varint(buf_, (uint64_t)field << 3 | (uint64_t)wire_type); }

Message& Message::varint(int field, uint64_t v) {
  tag(field, 0);
  append_varint(buf_, v);
  return *this;
}

Message& Message::fixed32(int field, uint32_t v) {
  tag(field, 5);
  append_le(buf_, v, 4);
  return *this;
}

Message& Message::float32(int field, float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, 4);
  return fixed32(field, bits);
}

Message& Message::fixed64(int field, uint64_t v) {
  tag(field, 1);
  append_le(buf_, v, 8);
  return *this;
}

Message& Message::float64(int field, double v) {
  uint64_t bits;
  std::memcpy(&bits, &v, 8);
  return fixed64(field, bits);
}

Message& Message::bytes(int field, std::string_view v) {
  tag(field, 2);
  append_varint(buf_, v.size());
  buf_.append(v);
  return *this;
}

}  // namespace pb
