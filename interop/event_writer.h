// TensorBoard event files: scalars that `tensorboard --logdir DIR` plots, written without TensorFlow.
//
// A new file DIR/events.out.tfevents.<unix seconds>.<host>.<pid>.<n> per writer, of TFRecord records, each
//   u64 length (little-endian) | u32 masked CRC32C of those 8 bytes | data | u32 masked CRC32C of data
// (masked crc = ((crc >> 15) | (crc << 17)) + 0xa282ead8), every data an Event protobuf
// (tensorflow/core/util/event.proto): wall_time (1, double seconds), step (2, int64), and
// file_version (3) "brain.Event:2" in the first event, or summary (5): Summary{value (1): Value{tag (1),
// simple_value (2, float)}}.
//
// From a training loop:   interop::EventWriter tb(run_dir);  ...  tb.scalar("train/loss", step, loss);
#pragma once
#include <cstdint>
#include <fstream>
#include <string>

namespace interop {

uint32_t crc32c(const void* data, size_t n);  // CRC-32C (Castagnoli), as TFRecord uses it
uint32_t masked_crc32c(const void* data, size_t n);

class EventWriter {
 public:
  // Creates dir if needed and a new event file in it; throws naming the file when it cannot.
  explicit EventWriter(const std::string& dir);
  // Appends one scalar and flushes it, so that TensorBoard sees it while training runs.
  void scalar(const std::string& tag, int64_t step, float value);
  const std::string& path() const { return path_; }

 private:
  void write_record(const std::string& data);
  std::string path_;
  std::ofstream out_;
};

}  // namespace interop
