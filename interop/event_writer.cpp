#include "interop/event_writer.h"

#include <fmt/format.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <filesystem>

#include "interop/protobuf.h"

namespace interop {

uint32_t crc32c(const void* data, size_t n) {
  static const std::array<uint32_t, 256> table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t i = 0; i < 256; i++) {
      uint32_t c = i;
      for (int k = 0; k < 8; k++) c = c & 1 ? (c >> 1) ^ 0x82f63b78u : c >> 1;  // reflected Castagnoli polynomial
      t[i] = c;
    }
    return t;
  }();
  uint32_t crc = 0xffffffffu;
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < n; i++) crc = table[(crc ^ p[i]) & 0xff] ^ (crc >> 8);
  return crc ^ 0xffffffffu;
}

uint32_t masked_crc32c(const void* data, size_t n) {
  const uint32_t crc = crc32c(data, n);
  return ((crc >> 15) | (crc << 17)) + 0xa282ead8u;
}

static double now_seconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// Event fields (event.proto) and Summary / Summary.Value fields (summary.proto).
enum { kWallTime = 1, kStep = 2, kFileVersion = 3, kSummary = 5, kValue = 1, kTag = 1, kSimpleValue = 2 };

EventWriter::EventWriter(const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  char host[256] = "localhost";
  gethostname(host, sizeof host - 1);
  // As TensorFlow names them: seconds, host, process id and a count of this process's writers, so that a
  // resumed run (even within the same second) gets a new file.
  static int writers = 0;
  path_ = (std::filesystem::path(dir) /
           fmt::format("events.out.tfevents.{}.{}.{}.{}", (int64_t)now_seconds(), host, getpid(), writers++)).string();
  out_.open(path_, std::ios::binary | std::ios::app);
  if (!out_) throw std::runtime_error(fmt::format("TensorBoard event file {}: cannot create it", path_));
  write_record(pb::Message().float64(kWallTime, now_seconds()).bytes(kFileVersion, "brain.Event:2").str());
}

void EventWriter::scalar(const std::string& tag, int64_t step, float value) {
  pb::Message summary;
  summary.message(kValue, pb::Message().bytes(kTag, tag).float32(kSimpleValue, value));
  write_record(pb::Message().float64(kWallTime, now_seconds()).int64(kStep, step).message(kSummary, summary).str());
}

void EventWriter::write_record(const std::string& data) {
  std::string rec;
  pb::append_le(rec, data.size(), 8);
  pb::append_le(rec, masked_crc32c(rec.data(), 8), 4);
  rec += data;
  pb::append_le(rec, masked_crc32c(data.data(), data.size()), 4);
  out_.write(rec.data(), (std::streamsize)rec.size());
  out_.flush();
  if (!out_) throw std::runtime_error(fmt::format("TensorBoard event file {}: write failed", path_));
}

}  // namespace interop
