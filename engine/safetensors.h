// Safetensors checkpoints (https://github.com/huggingface/safetensors), independent of the engine's tensor type.
//
// Layout of a file:
//   u64 N (little-endian)                       length of the header
//   N bytes of UTF-8 JSON, padded with spaces    {"name": {"dtype": "F32", "shape": [2, 3], "data_offsets": [b, e]},
//     so that N % 8 == 0                          ..., "__metadata__": {"key": "value", ...}}
//   the data buffer                              raw little-endian values, row-major; offsets [b, e) are relative to
//                                                the start of the buffer, contiguous, non-overlapping, covering it.
// `save` writes tensors sorted by name with "__metadata__" first (only when there is metadata).
// `load` checks all of the above, then reads every tensor into memory; every error names the file.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <map>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

namespace st {

enum class DType { BOOL, U8, I8, I16, I32, I64, F16, BF16, F32, F64 };

size_t dtype_size(DType);        // bytes per element: BOOL 1 ... F64 8
const char* dtype_name(DType);   // the format's spelling: "F32", "I64", "BOOL", ...
bool dtype_from_name(const std::string& name, DType* out);  // false for an unknown name

// The C++ type stored for a dtype, for the typed helpers below (F16/BF16 have none: use `bytes`).
template <class T> constexpr DType dtype_of();
template <> constexpr DType dtype_of<bool>() { return DType::BOOL; }
template <> constexpr DType dtype_of<uint8_t>() { return DType::U8; }
template <> constexpr DType dtype_of<int8_t>() { return DType::I8; }
template <> constexpr DType dtype_of<int16_t>() { return DType::I16; }
template <> constexpr DType dtype_of<int32_t>() { return DType::I32; }
template <> constexpr DType dtype_of<int64_t>() { return DType::I64; }
template <> constexpr DType dtype_of<float>() { return DType::F32; }
template <> constexpr DType dtype_of<double>() { return DType::F64; }

int64_t numel(const std::vector<int64_t>& shape);  // 1 for the scalar shape []
std::string shape_str(const std::vector<int64_t>& shape);  // "[2, 3]"
std::string cut(const std::string& s);  // s cut at 80 characters, "..." marking it: input quoted in a message

// One tensor: its dtype, shape and row-major little-endian bytes (bytes.size() == numel * dtype_size).
struct Entry {
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;

  int64_t numel() const { return st::numel(shape); }

  // Entry::of({2, 3}, values) copies 6 values of type T (from a pointer, or a vector checked to hold 6);
  // to_vector<T>() copies them back (throws on a dtype mismatch).
  template <class T> static Entry of(std::vector<int64_t> shape, const T* data) {
    Entry e{dtype_of<T>(), std::move(shape), {}};
    e.bytes.resize(size_t(e.numel()) * sizeof(T));
    if (!e.bytes.empty()) std::memcpy(e.bytes.data(), data, e.bytes.size());
    return e;
  }
  template <class T> static Entry of(std::vector<int64_t> shape, const std::vector<T>& data) {
    if (int64_t(data.size()) != st::numel(shape))
      throw std::runtime_error("safetensors: Entry::of: " + std::to_string(data.size()) + " values for shape " +
                               shape_str(shape));
    if constexpr (std::is_same_v<T, bool>) {  // std::vector<bool> has no data()
      std::vector<uint8_t> b(data.begin(), data.end());
      Entry e = of<uint8_t>(std::move(shape), b.data());
      e.dtype = DType::BOOL;
      return e;
    } else {
      return of<T>(std::move(shape), data.data());
    }
  }
  template <class T> std::vector<T> to_vector() const {
    if (dtype != dtype_of<T>())
      throw std::runtime_error(std::string("safetensors: to_vector of a ") + dtype_name(dtype) + " tensor as " +
                               dtype_name(dtype_of<T>()));
    if constexpr (std::is_same_v<T, bool>) {
      return std::vector<bool>(bytes.begin(), bytes.end());
    } else {
      std::vector<T> v(bytes.size() / sizeof(T));
      if (!bytes.empty()) std::memcpy(v.data(), bytes.data(), bytes.size());
      return v;
    }
  }
};

struct File {
  std::map<std::string, Entry> tensors;            // written sorted by name
  std::map<std::string, std::string> metadata;     // "__metadata__": string -> string only, as the format requires
};

// Reads and validates `path`. Throws std::runtime_error "file <path>: <what is wrong>".
File load(const std::string& path);

// Writes `file` to `path` atomically (see write_file_atomic). Throws if an entry's byte count disagrees with
// its shape and dtype, or if a name is empty or "__metadata__".
void save(const std::string& path, const File& file);

// Writes `contents` to `path` + ".tmp.<pid>", fsyncs it, renames it over `path` and fsyncs the directory:
// a reader sees either the old file or the new one, never a partial one. On failure the temporary file is
// removed, `path` is left as it was, and std::runtime_error names `path` and the failing step (except a failed
// fsync of the directory, which comes after the rename and says "written, but ...").
void write_file_atomic(const std::string& path, const std::string& contents);

// Removes what write_file_atomic leaves in `dir` when its process is killed mid-write: the files
// "<name>.tmp.<pid>" whose process no longer runs. Returns their names (a file of a live process stays).
std::vector<std::string> remove_stale_temporaries(const std::string& dir);

// A metadata value of the file `path` as an integer in [lo, hi], or as a finite number in [lo, hi] (hi may be
// infinite). Throws naming the file, the key, the value and the range when the key is missing or the value
// is not a number in the range.
int64_t metadata_int(const std::map<std::string, std::string>& md, const std::string& path, const std::string& key,
                     int64_t lo, int64_t hi);
double metadata_double(const std::map<std::string, std::string>& md, const std::string& path, const std::string& key,
                       double lo, double hi);

// The tensor `name` of `file`, checked to have `dtype` and `shape`; else throws
// "file <path_for_errors>: tensor 'name' has shape [..], expected [..]" (or is missing / has dtype X, expected Y).
const Entry& require(const File& file, const std::string& name, DType dtype, const std::vector<int64_t>& shape,
                     const std::string& path_for_errors);
// The same over a file's tensors held apart (layers::Checkpoint::extra).
const Entry& require(const std::map<std::string, Entry>& tensors, const std::string& name, DType dtype,
                     const std::vector<int64_t>& shape, const std::string& path_for_errors);

namespace detail {
// Test hook: when true, write_file_atomic fails after writing the temporary file and before the rename,
// as a full disk or a crash would. Tests only.
inline bool simulate_write_failure = false;
}  // namespace detail

}  // namespace st
