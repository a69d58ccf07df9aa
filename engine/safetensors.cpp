// Safetensors reading and writing: see safetensors.h for the layout.
#include "engine/safetensors.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <charconv>
#include <cmath>
#include <cerrno>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string_view>
#include <tuple>
#include <utility>

static_assert(std::endian::native == std::endian::little, "safetensors data is little-endian; this host is not");

namespace st {

namespace {

struct DTypeInfo { DType dtype; const char* name; size_t size; };
constexpr DTypeInfo kDTypes[] = {
    {DType::BOOL, "BOOL", 1}, {DType::U8, "U8", 1},     {DType::I8, "I8", 1},     {DType::I16, "I16", 2},
    {DType::I32, "I32", 4},   {DType::I64, "I64", 8},   {DType::F16, "F16", 2},   {DType::BF16, "BF16", 2},
    {DType::F32, "F32", 4},   {DType::F64, "F64", 8},
};

const DTypeInfo& info(DType d) {
  for (auto& i : kDTypes)
    if (i.dtype == d) return i;
  throw std::runtime_error("safetensors: invalid DType value " + std::to_string(int(d)));
}

[[noreturn]] void fail(const std::string& path, const std::string& what) {
  throw std::runtime_error("file " + path + ": " + what);
}

std::string errno_str() { return std::strerror(errno); }

std::string cut_json(const nlohmann::json& j) { return cut(j.dump()); }

// A header nests 3 deep ({"name": {"shape": [...]}}); deeper JSON is refused before parsing, as the
// recursive dump and destructor of a value nested tens of thousands deep would overflow the stack.
constexpr size_t kMaxHeaderDepth = 16;

// The deepest nesting of [ and { in text, outside strings.
size_t json_depth(const std::string& text) {
  size_t depth = 0, deepest = 0;
  bool in_string = false;
  for (size_t i = 0; i < text.size(); i++) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\') i++;
      else if (c == '"') in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      deepest = std::max(deepest, ++depth);
    } else if ((c == ']' || c == '}') && depth > 0) {
      depth--;
    }
  }
  return deepest;
}

// Reads exactly n bytes at offset, or fails naming the file.
void read_at(int fd, const std::string& path, void* dst, size_t n, uint64_t offset) {
  auto* p = static_cast<uint8_t*>(dst);
  while (n > 0) {
    ssize_t r = ::pread(fd, p, n, off_t(offset));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) fail(path, "read failed: " + errno_str());
    if (r == 0) fail(path, "unexpected end of file");
    p += r, n -= size_t(r), offset += uint64_t(r);
  }
}

struct Fd {  // closes on scope exit
  int fd = -1;
  ~Fd() { if (fd >= 0) ::close(fd); }
};

// A tensor's header entry, checked on its own; the buffer-wide checks come after.
struct Span { std::string name; uint64_t begin, end; };

Entry parse_entry(const std::string& path, const std::string& name, const nlohmann::json& j, uint64_t buffer_size,
                  Span* span) {
  auto bad = [&](const std::string& what) { fail(path, "tensor '" + cut(name) + "': " + what); };
  if (!j.is_object()) bad("entry is not a JSON object");
  for (const char* key : {"dtype", "shape", "data_offsets"})
    if (!j.contains(key)) bad(std::string("missing \"") + key + "\"");

  Entry e;
  const auto& jd = j["dtype"];
  if (!jd.is_string()) bad("\"dtype\" is not a string");
  if (!dtype_from_name(jd.get<std::string>(), &e.dtype)) bad("unknown dtype \"" + cut(jd.get<std::string>()) + "\"");

  const auto& js = j["shape"];
  if (!js.is_array()) bad("\"shape\" is not a list");
  uint64_t count = 1;
  for (const auto& d : js) {
    if (!d.is_number_unsigned() || d.get<uint64_t>() > uint64_t(INT64_MAX))
      bad("\"shape\" must hold non-negative integers, got " + cut_json(js));
    e.shape.push_back(int64_t(d.get<uint64_t>()));
    if (__builtin_mul_overflow(count, d.get<uint64_t>(), &count)) bad("shape " + cut_json(js) + " overflows");
  }
  uint64_t need = 0;
  if (__builtin_mul_overflow(count, uint64_t(dtype_size(e.dtype)), &need)) bad("shape " + cut_json(js) + " overflows");

  const auto& jo = j["data_offsets"];
  if (!jo.is_array() || jo.size() != 2 || !jo[0].is_number_unsigned() || !jo[1].is_number_unsigned())
    bad("\"data_offsets\" must be two non-negative integers [begin, end], got " + cut_json(jo));
  uint64_t b = jo[0].get<uint64_t>(), en = jo[1].get<uint64_t>();
  if (b > en || en > buffer_size)
    bad("data_offsets " + cut_json(jo) + " out of range: the data buffer has " + std::to_string(buffer_size) + " bytes");
  if (en - b != need)
    bad("data_offsets " + cut_json(jo) + " hold " + std::to_string(en - b) + " bytes, but shape " + cut(shape_str(e.shape)) +
        " of " + dtype_name(e.dtype) + " needs " + std::to_string(need));
  *span = {name, b, en};
  return e;
}

// Writes the pieces to path + ".tmp.<pid>", fsyncs, renames over path, fsyncs the directory.
void write_atomic(const std::string& path, const std::vector<std::string_view>& pieces) {
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  auto fail_w = [&](const std::string& step) {
    std::string why = errno_str();
    ::unlink(tmp.c_str());
    throw std::runtime_error("file " + path + ": write failed (" + step + " " + tmp + "): " + why);
  };
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    std::string why = errno_str();  // nothing was created: nothing to remove
    throw std::runtime_error("file " + path + ": write failed (open " + tmp + "): " + why);
  }
  for (std::string_view piece : pieces) {
    while (!piece.empty()) {
      ssize_t w = ::write(fd, piece.data(), piece.size());
      if (w < 0 && errno == EINTR) continue;
      if (w < 0) { ::close(fd); fail_w("write"); }
      piece.remove_prefix(size_t(w));
    }
  }
  if (::fsync(fd) != 0) { ::close(fd); fail_w("fsync"); }
  if (::close(fd) != 0) fail_w("close");
  if (detail::simulate_write_failure) { errno = ENOSPC; fail_w("simulated failure before rename of"); }
  if (::rename(tmp.c_str(), path.c_str()) != 0) fail_w("rename");

  std::string dir = std::filesystem::path(path).parent_path().string();
  if (dir.empty()) dir = ".";
  int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) throw std::runtime_error("file " + path + ": written, but cannot open its directory to fsync: " + errno_str());
  int rc = ::fsync(dfd), err = errno;
  ::close(dfd);
  if (rc != 0 && err != EINVAL)  // EINVAL: the filesystem cannot fsync directories
    throw std::runtime_error("file " + path + ": written, but fsync of its directory failed: " + std::strerror(err));
}

}  // namespace

std::vector<std::string> remove_stale_temporaries(const std::string& dir) {
  std::vector<std::string> removed;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    const size_t at = name.rfind(".tmp.");
    if (at == std::string::npos || !e.is_regular_file(ec)) continue;
    const std::string digits = name.substr(at + 5);
    if (digits.empty() || digits.size() > 9 || digits.find_first_not_of("0123456789") != std::string::npos) continue;
    const pid_t pid = (pid_t)std::stol(digits);
    if (pid <= 0 || ::kill(pid, 0) == 0 || errno != ESRCH) continue;  // alive, or not ours to ask: kept
    if (std::filesystem::remove(e.path(), ec)) removed.push_back(name);
  }
  return removed;
}

std::string cut(const std::string& s) { return s.size() <= 80 ? s : s.substr(0, 77) + "..."; }

size_t dtype_size(DType d) { return info(d).size; }
const char* dtype_name(DType d) { return info(d).name; }

bool dtype_from_name(const std::string& name, DType* out) {
  for (auto& i : kDTypes)
    if (name == i.name) { *out = i.dtype; return true; }
  return false;
}

int64_t numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); i++) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

File load(const std::string& path) {
  Fd f{::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK)};  // O_NONBLOCK: a FIFO must not block open()
  if (f.fd < 0) fail(path, "cannot open: " + errno_str());
  struct stat sb;
  if (::fstat(f.fd, &sb) != 0) fail(path, "cannot stat: " + errno_str());
  if (!S_ISREG(sb.st_mode)) fail(path, "not a regular file");
  const uint64_t file_size = uint64_t(sb.st_size);
  if (file_size < 8)
    fail(path, "too short for a safetensors file: " + std::to_string(file_size) + " bytes, need at least 8");

  uint8_t len_le[8];
  read_at(f.fd, path, len_le, 8, 0);
  uint64_t n = 0;
  for (int i = 7; i >= 0; i--) n = (n << 8) | len_le[i];
  if (n > file_size - 8)
    fail(path, "header length " + std::to_string(n) + " is larger than the " + std::to_string(file_size - 8) +
                   " bytes after the length field");
  std::string header(n, '\0');
  read_at(f.fd, path, header.data(), n, 8);
  const uint64_t buffer_size = file_size - 8 - n;

  if (size_t depth = json_depth(header); depth > kMaxHeaderDepth)
    fail(path, "header nests " + std::to_string(depth) + " levels deep, more than the " +
                   std::to_string(kMaxHeaderDepth) + " allowed (a header needs 3)");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(header);
  } catch (const nlohmann::json::exception& e) {
    fail(path, std::string("header is not valid JSON: ") + e.what());
  }
  if (!j.is_object()) fail(path, "header is not a JSON object");

  File file;
  std::vector<Span> spans;
  for (const auto& [name, value] : j.items()) {
    if (name == "__metadata__") {
      if (!value.is_object()) fail(path, "\"__metadata__\" is not a JSON object");
      for (const auto& [k, v] : value.items()) {
        if (!v.is_string()) fail(path, "\"__metadata__\" value of '" + cut(k) + "' is not a string: " + cut_json(v));
        file.metadata[k] = v.get<std::string>();
      }
      continue;
    }
    Span span;
    file.tensors[name] = parse_entry(path, name, value, buffer_size, &span);
    spans.push_back(span);
  }

  // The entries must tile the buffer exactly: sorted by offset, each starts where the previous ended.
  std::sort(spans.begin(), spans.end(),
            [](const Span& a, const Span& b) { return std::tie(a.begin, a.end) < std::tie(b.begin, b.end); });
  uint64_t cursor = 0;
  const Span* prev = nullptr;
  for (const Span& s : spans) {
    if (s.begin < cursor)
      fail(path, "tensors '" + cut(prev->name) + "' and '" + cut(s.name) + "' overlap: [" + std::to_string(prev->begin) + ", " +
                     std::to_string(prev->end) + ") and [" + std::to_string(s.begin) + ", " + std::to_string(s.end) + ")");
    if (s.begin > cursor)
      fail(path, "bytes [" + std::to_string(cursor) + ", " + std::to_string(s.begin) +
                     ") of the data buffer belong to no tensor");
    cursor = s.end;
    if (s.end > s.begin || !prev) prev = &s;
  }
  if (cursor != buffer_size)
    fail(path, "data buffer has " + std::to_string(buffer_size) + " bytes, but the tensors cover " +
                   std::to_string(cursor) + " (trailing data)");

  for (const Span& s : spans) {
    Entry& e = file.tensors[s.name];
    e.bytes.resize(s.end - s.begin);
    read_at(f.fd, path, e.bytes.data(), e.bytes.size(), 8 + n + s.begin);
  }
  return file;
}

void save(const std::string& path, const File& file) {
  // Header: "__metadata__" first, then tensors by name, each {"dtype", "shape", "data_offsets"}.
  nlohmann::ordered_json j = nlohmann::ordered_json::object();
  if (!file.metadata.empty()) j["__metadata__"] = file.metadata;
  std::vector<std::string_view> pieces{{}, {}};  // length and header, filled below
  uint64_t offset = 0;
  for (const auto& [name, e] : file.tensors) {
    if (name.empty() || name == "__metadata__") fail(path, "cannot save a tensor named '" + name + "'");
    int64_t count = e.numel();
    for (int64_t d : e.shape)
      if (d < 0) fail(path, "tensor '" + name + "': negative dimension in shape " + shape_str(e.shape));
    if (e.bytes.size() != uint64_t(count) * dtype_size(e.dtype))
      fail(path, "tensor '" + name + "': has " + std::to_string(e.bytes.size()) + " bytes, but shape " +
                     shape_str(e.shape) + " of " + dtype_name(e.dtype) + " needs " +
                     std::to_string(uint64_t(count) * dtype_size(e.dtype)));
    j[name] = {{"dtype", dtype_name(e.dtype)}, {"shape", e.shape}, {"data_offsets", {offset, offset + e.bytes.size()}}};
    offset += e.bytes.size();
    pieces.emplace_back(reinterpret_cast<const char*>(e.bytes.data()), e.bytes.size());
  }
  std::string header = j.dump();
  header.resize((header.size() + 7) / 8 * 8, ' ');  // pad so the buffer starts 8-byte aligned
  char len_le[8];
  for (int i = 0; i < 8; i++) len_le[i] = char((uint64_t(header.size()) >> (8 * i)) & 0xff);
  pieces[0] = {len_le, 8};
  pieces[1] = header;
  write_atomic(path, pieces);
}

void write_file_atomic(const std::string& path, const std::string& contents) { write_atomic(path, {contents}); }

const Entry& require(const File& file, const std::string& name, DType dtype, const std::vector<int64_t>& shape,
                     const std::string& path_for_errors) {
  return require(file.tensors, name, dtype, shape, path_for_errors);
}

const Entry& require(const std::map<std::string, Entry>& tensors, const std::string& name, DType dtype,
                     const std::vector<int64_t>& shape, const std::string& path_for_errors) {
  auto it = tensors.find(name);
  if (it == tensors.end()) fail(path_for_errors, "tensor '" + name + "' is missing");
  const Entry& e = it->second;
  if (e.dtype != dtype)
    fail(path_for_errors, "tensor '" + name + "' has dtype " + dtype_name(e.dtype) + ", expected " + dtype_name(dtype));
  if (e.shape != shape)
    fail(path_for_errors, "tensor '" + name + "' has shape " + cut(shape_str(e.shape)) + ", expected " + shape_str(shape));
  return e;
}

static const std::string& metadata_value(const std::map<std::string, std::string>& md, const std::string& path, const std::string& key,
                                         const std::string& expected) {
  auto it = md.find(key);
  if (it == md.end()) throw std::runtime_error(fmt::format("file {}: metadata \"{}\" is missing (expected {})", path, key, expected));
  return it->second;
}

int64_t metadata_int(const std::map<std::string, std::string>& md, const std::string& path, const std::string& key, int64_t lo, int64_t hi) {
  const std::string expected = fmt::format("an integer in [{}, {}]", lo, hi);
  const std::string& v = metadata_value(md, path, key, expected);
  int64_t x = 0;
  auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), x);
  if (ec != std::errc() || end != v.data() + v.size() || x < lo || x > hi)
    throw std::runtime_error(fmt::format("file {}: metadata \"{}\" is '{}', expected {}", path, key, cut(v), expected));
  return x;
}

double metadata_double(const std::map<std::string, std::string>& md, const std::string& path, const std::string& key, double lo, double hi) {
  const std::string expected = fmt::format("a finite number in [{}, {}]", lo, hi);
  const std::string& v = metadata_value(md, path, key, expected);
  double x = 0;
  auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), x);
  if (ec != std::errc() || end != v.data() + v.size() || !std::isfinite(x) || x < lo || x > hi)
    throw std::runtime_error(fmt::format("file {}: metadata \"{}\" is '{}', expected {}", path, key, cut(v), expected));
  return x;
}

}  // namespace st
