// Safetensors: round trips, the exact byte layout, every corruption's error message, atomic writes, and a
// file written by tests/reference/safetensors_io.py (pure Python + torch).
#include "engine/safetensors.h"

#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "tests/testing.h"

namespace fs = std::filesystem;

namespace {

// A fresh directory under the system temp dir, removed with everything in it.
struct TempDir {
  fs::path dir;
  TempDir() {
    static std::atomic<int> counter{0};
    dir = fs::temp_directory_path() / ("st_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::remove_all(dir);
    fs::create_directories(dir);
  }
  ~TempDir() {
    std::error_code ec;
    fs::permissions(dir, fs::perms::owner_all, fs::perm_options::add, ec);
    fs::remove_all(dir, ec);
  }
  std::string operator/(const std::string& name) const { return (dir / name).string(); }
  std::vector<std::string> names() const {  // sorted file names in the directory
    std::vector<std::string> v;
    for (auto& e : fs::directory_iterator(dir)) v.push_back(e.path().filename().string());
    std::sort(v.begin(), v.end());
    return v;
  }
};

std::string read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

std::string u64le(uint64_t n) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; i++) s[i] = char((n >> (8 * i)) & 0xff);
  return s;
}

// A raw file: length, header, `buffer_size` zero bytes.
std::string raw_file(const std::string& header, size_t buffer_size) {
  return u64le(header.size()) + header + std::string(buffer_size, '\0');
}

// The message `f()` throws, or "" when it does not throw.
template <class F> std::string error_of(F f) {
  try {
    f();
  } catch (const std::runtime_error& e) {
    return e.what();
  }
  return "";
}
std::string load_error(const std::string& path) { return error_of([&] { st::load(path); }); }

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

st::File sample_file() {
  st::File f;
  f.tensors["a_f32"] = st::Entry::of<float>({2, 3}, {0.5f, -1.f, 2.25f, 1e-30f, -0.f, 3.4e38f});
  f.tensors["b_f64"] = st::Entry::of<double>({3}, {1.0 / 3, -2e300, 5e-324});
  f.tensors["c_i32"] = st::Entry::of<int32_t>({2, 1, 2}, {INT32_MIN, -1, 0, INT32_MAX});
  f.tensors["d_i64"] = st::Entry::of<int64_t>({2}, {INT64_MIN, INT64_MAX});
  f.tensors["e_u8"] = st::Entry::of<uint8_t>({4}, {0, 1, 128, 255});
  f.tensors["f_i8"] = st::Entry::of<int8_t>({1, 2}, {-128, 127});
  f.tensors["g_bool"] = st::Entry::of<bool>({3}, std::vector<bool>{true, false, true});
  f.tensors["h_scalar"] = st::Entry::of<float>({}, {42.5f});
  f.tensors["i_empty"] = st::Entry::of<float>({0}, std::vector<float>{});
  f.tensors["j_empty2d"] = st::Entry::of<int64_t>({2, 0, 3}, std::vector<int64_t>{});
  f.tensors["k_f16"] = {st::DType::F16, {2}, {0x00, 0x3c, 0x00, 0xc0}};  // 1.0, -2.0 as raw half bytes
  f.tensors["l_i16"] = st::Entry::of<int16_t>({2}, {-32768, 32767});
  f.metadata = {{"format", "pt"}, {"epoch", "7"}, {"note", "unicode \xc3\xa9 \"quoted\" \\ ok"}, {"empty", ""}};
  return f;
}

}  // namespace

TEST_CASE("safetensors: dtype names and sizes") {
  CHECK(st::dtype_size(st::DType::F32) == 4);
  CHECK(st::dtype_size(st::DType::F64) == 8);
  CHECK(st::dtype_size(st::DType::I64) == 8);
  CHECK(st::dtype_size(st::DType::BF16) == 2);
  CHECK(st::dtype_size(st::DType::BOOL) == 1);
  CHECK(std::string(st::dtype_name(st::DType::I32)) == "I32");
  st::DType d;
  CHECK((st::dtype_from_name("BF16", &d) && d == st::DType::BF16));
  CHECK_FALSE(st::dtype_from_name("f32", &d));
  CHECK(st::numel({}) == 1);
  CHECK(st::numel({2, 0, 3}) == 0);
  CHECK(st::shape_str({2, 3}) == "[2, 3]");
  CHECK(st::shape_str({}) == "[]");
}

TEST_CASE("safetensors: round trip of dtypes, shapes and metadata") {
  TempDir tmp;
  const std::string path = tmp / "rt.safetensors";
  const st::File f = sample_file();
  st::save(path, f);
  const st::File g = st::load(path);

  REQUIRE(g.tensors.size() == f.tensors.size());
  for (const auto& [name, e] : f.tensors) {
    INFO(name);
    REQUIRE(g.tensors.count(name) == 1);
    const st::Entry& h = g.tensors.at(name);
    CHECK(h.dtype == e.dtype);
    CHECK(h.shape == e.shape);
    CHECK(h.bytes == e.bytes);
  }
  CHECK(g.metadata == f.metadata);
  CHECK(g.tensors.at("a_f32").to_vector<float>() == f.tensors.at("a_f32").to_vector<float>());
  CHECK(g.tensors.at("d_i64").to_vector<int64_t>() == std::vector<int64_t>{INT64_MIN, INT64_MAX});
  CHECK(g.tensors.at("g_bool").to_vector<bool>() == std::vector<bool>{true, false, true});
  CHECK(g.tensors.at("h_scalar").shape.empty());
  CHECK(g.tensors.at("h_scalar").to_vector<float>() == std::vector<float>{42.5f});
  CHECK(g.tensors.at("i_empty").bytes.empty());
  CHECK_THROWS_WITH_AS(g.tensors.at("a_f32").to_vector<double>(), doctest::Contains("F32"), std::runtime_error);

  // The header is padded so the data buffer starts 8-byte aligned, and saving again gives the same bytes.
  const std::string bytes = read_bytes(path);
  uint64_t n = 0;
  for (int i = 7; i >= 0; i--) n = (n << 8) | uint8_t(bytes[i]);
  CHECK(n % 8 == 0);
  st::save(tmp / "rt2.safetensors", g);
  CHECK(read_bytes(tmp / "rt2.safetensors") == bytes);

  // No metadata and no tensors: a valid file with the header "{}".
  st::save(tmp / "empty.safetensors", st::File{});
  CHECK(read_bytes(tmp / "empty.safetensors") == u64le(8) + "{}      ");
  const st::File e = st::load(tmp / "empty.safetensors");
  CHECK(e.tensors.empty());
  CHECK(e.metadata.empty());
}

TEST_CASE("safetensors: byte layout of a small file") {
  TempDir tmp;
  st::File f;
  f.tensors["x"] = st::Entry::of<float>({2}, {1.0f, -2.0f});
  f.tensors["n"] = st::Entry::of<int32_t>({}, {7});
  f.metadata["a"] = "b";
  st::save(tmp / "small.safetensors", f);

  // 132 bytes of JSON (metadata first, tensors by name), 4 spaces to reach 136 = 0x88, then n (4 bytes), x (8 bytes).
  const std::string json =
      R"({"__metadata__":{"a":"b"},"n":{"dtype":"I32","shape":[],"data_offsets":[0,4]},)"
      R"("x":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})";
  REQUIRE(json.size() == 132);
  const std::string expected = std::string("\x88\0\0\0\0\0\0\0", 8) + json + "    " +
                               std::string("\x07\0\0\0", 4) +            // int32 7
                               std::string("\x00\x00\x80\x3f", 4) +      // float 1.0
                               std::string("\x00\x00\x00\xc0", 4);       // float -2.0
  CHECK(expected.size() == 156);
  CHECK(read_bytes(tmp / "small.safetensors") == expected);
}

TEST_CASE("safetensors: each corruption gives a clear error naming the file") {
  TempDir tmp;
  const std::string p = tmp / "bad.safetensors";

  const std::string missing = load_error(tmp / "nope.safetensors");
  CHECK(contains(missing, "file " + tmp / "nope.safetensors" + ": cannot open: No such file"));
  CHECK(contains(load_error(tmp.dir.string()), "file " + tmp.dir.string() + ": not a regular file"));

  struct Case { const char* what; std::string bytes; const char* message; };
  const std::string ok_entry = R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  const Case cases[] = {
      {"empty file", "", "too short for a safetensors file: 0 bytes, need at least 8"},
      {"shorter than 8 bytes", std::string("\x05\0\0", 3), "too short for a safetensors file: 3 bytes, need at least 8"},
      {"header length larger than the file", u64le(1000) + "{}",
       "header length 1000 is larger than the 2 bytes after the length field"},
      {"huge header length", u64le(UINT64_MAX) + "{}", "header length 18446744073709551615 is larger"},
      {"header not JSON", raw_file("{\"a\": {", 0), "header is not valid JSON"},
      {"header not UTF-8", raw_file("{\"\xff\":{}}", 0), "header is not valid JSON"},
      {"header not an object", raw_file("[1, 2]", 0), "header is not a JSON object"},
      {"entry not an object", raw_file(R"({"a": 3})", 0), "tensor 'a': entry is not a JSON object"},
      {"missing dtype", raw_file(R"({"a":{"shape":[2],"data_offsets":[0,8]}})", 8), "tensor 'a': missing \"dtype\""},
      {"missing shape", raw_file(R"({"a":{"dtype":"F32","data_offsets":[0,8]}})", 8), "tensor 'a': missing \"shape\""},
      {"missing data_offsets", raw_file(R"({"a":{"dtype":"F32","shape":[2]}})", 8),
       "tensor 'a': missing \"data_offsets\""},
      {"unknown dtype", raw_file(R"({"a":{"dtype":"Q7","shape":[2],"data_offsets":[0,8]}})", 8),
       "tensor 'a': unknown dtype \"Q7\""},
      {"negative dimension", raw_file(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8),
       "tensor 'a': \"shape\" must hold non-negative integers, got [-2]"},
      {"offsets not a pair", raw_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0]}})", 8),
       "tensor 'a': \"data_offsets\" must be two non-negative integers"},
      {"offsets beyond the buffer", raw_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 4),
       "tensor 'a': data_offsets [0,8] out of range: the data buffer has 4 bytes"},
      {"offsets reversed", raw_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", 8),
       "tensor 'a': data_offsets [8,0] out of range"},
      {"offsets disagree with shape", raw_file(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8),
       "tensor 'a': data_offsets [0,8] hold 8 bytes, but shape [3] of F32 needs 12"},
      {"overlapping entries",
       raw_file("{" + ok_entry + R"(,"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 12),
       "tensors 'a' and 'b' overlap: [0, 8) and [4, 12)"},
      {"gap between entries", raw_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", 8),
       "bytes [0, 4) of the data buffer belong to no tensor"},
      {"trailing data", raw_file("{" + ok_entry + "}", 12), "data buffer has 12 bytes, but the tensors cover 8"},
      {"metadata not strings", raw_file(R"({"__metadata__":{"k":1}})", 0),
       "\"__metadata__\" value of 'k' is not a string: 1"},
  };
  for (const Case& c : cases) {
    INFO(std::string(c.what));
    write_bytes(p, c.bytes);
    const std::string e = load_error(p);
    CHECK(contains(e, "file " + p + ": "));
    CHECK_MESSAGE(contains(e, c.message), "got: ", e);
  }
}

TEST_CASE("safetensors: deep nesting, huge values and a FIFO give short clear errors, no crash or hang") {
  TempDir tmp;
  const std::string p = tmp / "bad.safetensors";
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  const std::string entry_with = R"({"a":{"dtype":"F32","shape":SHAPE,"data_offsets":[0,8]}})";
  auto with_shape = [&](const std::string& shape) {
    std::string h = entry_with;
    return h.replace(h.find("SHAPE"), 5, shape);
  };
  for (const std::string& header : {R"({"__metadata__":{"k":)" + deep + "}}", with_shape(deep),
                                    R"({"a":{"dtype":"F32","shape":[2],"data_offsets":)" + deep + "}}"}) {
    write_bytes(p, raw_file(header, 8));
    const std::string e = load_error(p);
    CHECK_MESSAGE(contains(e, "file " + p + ": header nests 10000"), e);  // and the header's own 1 or 2 levels
    CHECK_MESSAGE(contains(e, " levels deep, more than the 16 allowed (a header needs 3)"), e);
  }
  // A long list or name is quoted cut to 80 characters.
  std::string list = "[";
  for (int i = 0; i < 100000; i++) list += "-1,";
  list += "-1]";
  write_bytes(p, raw_file(with_shape(list), 8));
  std::string e = load_error(p);
  CHECK_MESSAGE(contains(e, "\"shape\" must hold non-negative integers, got [-1,-1,"), e);
  CHECK_MESSAGE(e.size() < 300, e);
  CHECK(contains(e, "..."));
  write_bytes(p, raw_file(R"({"__metadata__":{")" + std::string(100000, 'k') + R"(":)" + list + "}}", 0));
  e = load_error(p);
  CHECK(contains(e, "value of 'kkk"));
  CHECK_MESSAGE(e.size() < 300, e);
  const std::string long_name = std::string(100000, 'n');
  write_bytes(p, raw_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},")" + long_name +
                              R"(":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", 8));
  e = load_error(p);
  CHECK(contains(e, "tensors 'a' and 'nnn"));
  CHECK_MESSAGE(e.size() < 300, e);
  // Strings may hold brackets: only the structure counts.
  st::File f;
  f.metadata["brackets"] = std::string(1000, '[') + "\"\\";
  st::save(p, f);
  CHECK(st::load(p).metadata == f.metadata);

  CHECK(error_reading_fifo(tmp.dir / "fifo.safetensors", [&] { st::load(tmp / "fifo.safetensors"); }) ==
        "file " + tmp / "fifo.safetensors" + ": not a regular file");
}

TEST_CASE("safetensors: require checks name, dtype and shape") {
  const st::File f = sample_file();
  CHECK(st::require(f, "a_f32", st::DType::F32, {2, 3}, "ck.safetensors").bytes.size() == 24);
  CHECK_THROWS_WITH_AS(st::require(f, "a_f32", st::DType::F32, {3, 2}, "ck.safetensors"),
                       "file ck.safetensors: tensor 'a_f32' has shape [2, 3], expected [3, 2]", std::runtime_error);
  CHECK_THROWS_WITH_AS(st::require(f, "a_f32", st::DType::F64, {2, 3}, "ck.safetensors"),
                       "file ck.safetensors: tensor 'a_f32' has dtype F32, expected F64", std::runtime_error);
  CHECK_THROWS_WITH_AS(st::require(f, "zz", st::DType::F32, {1}, "ck.safetensors"),
                       "file ck.safetensors: tensor 'zz' is missing", std::runtime_error);
}

TEST_CASE("safetensors: save rejects inconsistent entries and writes nothing") {
  TempDir tmp;
  st::File f;
  f.tensors["w"] = {st::DType::F32, {2, 3}, std::vector<uint8_t>(20)};
  CHECK_THROWS_WITH_AS(st::save(tmp / "x.safetensors", f),
                       doctest::Contains("tensor 'w': has 20 bytes, but shape [2, 3] of F32 needs 24"),
                       std::runtime_error);
  st::File g;
  g.tensors["__metadata__"] = st::Entry::of<float>({}, {1.f});
  CHECK_THROWS_AS(st::save(tmp / "x.safetensors", g), std::runtime_error);
  CHECK(tmp.names().empty());
  CHECK_THROWS_AS(st::Entry::of<float>({2, 2}, {1.f, 2.f}), std::runtime_error);
}

TEST_CASE("safetensors: atomic writes") {
  TempDir tmp;
  const std::string path = tmp / "ck.safetensors";
  st::File a, b;
  a.tensors["w"] = st::Entry::of<float>({2}, {1.f, 2.f});
  a.metadata["v"] = "a";
  b.tensors["w"] = st::Entry::of<float>({3}, {3.f, 4.f, 5.f});
  b.metadata["v"] = "b";
  st::save(path, a);

  SUBCASE("writing over an existing file replaces it") {
    st::save(path, b);
    const st::File g = st::load(path);
    CHECK(g.metadata.at("v") == "b");
    CHECK(g.tensors.at("w").to_vector<float>() == std::vector<float>{3.f, 4.f, 5.f});
    CHECK(tmp.names() == std::vector<std::string>{"ck.safetensors"});
  }
  SUBCASE("a failure before the rename keeps the old file and removes the temporary") {
    const std::string before = read_bytes(path);
    st::detail::simulate_write_failure = true;
    const std::string e = error_of([&] { st::save(path, b); });
    st::detail::simulate_write_failure = false;
    CHECK(contains(e, "file " + path + ": write failed (simulated failure"));
    CHECK(read_bytes(path) == before);
    CHECK(st::load(path).metadata.at("v") == "a");
    CHECK(tmp.names() == std::vector<std::string>{"ck.safetensors"});
  }
  SUBCASE("a failed rename (target is a non-empty directory) removes the temporary") {
    fs::create_directories(tmp.dir / "d.safetensors" / "inside");
    CHECK_THROWS_WITH_AS(st::save(tmp / "d.safetensors", b), doctest::Contains("rename"), std::runtime_error);
    CHECK(tmp.names() == std::vector<std::string>{"ck.safetensors", "d.safetensors"});
  }
  SUBCASE("a missing directory fails naming the path") {
    const std::string missing = tmp / "no/such/dir/ck.safetensors";
    CHECK(contains(error_of([&] { st::save(missing, b); }), "file " + missing + ": write failed (open"));
  }
  SUBCASE("write_file_atomic for text files") {
    const std::string cfg = tmp / "config.json";
    st::write_file_atomic(cfg, "{\"a\": 1}\n");
    st::write_file_atomic(cfg, "{\"b\": 2}\n");
    CHECK(read_bytes(cfg) == "{\"b\": 2}\n");
    st::write_file_atomic(cfg, "");
    CHECK(read_bytes(cfg).empty());
    CHECK(tmp.names() == std::vector<std::string>{"ck.safetensors", "config.json"});
  }
}

// Root ignores directory permissions, so this runs only as an ordinary user.
TEST_CASE("safetensors: a read-only directory keeps the old file" *
          skip_unless(::geteuid() != 0, "safetensors read-only directory test: running as root")) {
  TempDir tmp;
  const std::string path = tmp / "ck.safetensors";
  st::File a;
  a.tensors["w"] = st::Entry::of<float>({1}, {1.f});
  st::save(path, a);
  const std::string before = read_bytes(path);
  ::chmod(tmp.dir.c_str(), 0500);
  a.tensors["w"] = st::Entry::of<float>({1}, {2.f});
  CHECK(contains(error_of([&] { st::save(path, a); }), "file " + path + ": write failed (open"));
  ::chmod(tmp.dir.c_str(), 0700);
  CHECK(read_bytes(path) == before);
  CHECK(tmp.names() == std::vector<std::string>{"ck.safetensors"});
}

// tests/reference/st_python.safetensors is written by `python3 tests/reference/safetensors_io.py`.
TEST_CASE("safetensors: reads the file written by the Python reference, and writes the same bytes") {
  const std::string path = "tests/reference/st_python.safetensors";
  const st::File f = st::load(path);
  CHECK(f.tensors.size() == 4);
  CHECK(f.metadata == std::map<std::string, std::string>{{"format", "pt"}, {"producer", "safetensors_io.py"}});
  CHECK(st::require(f, "weight", st::DType::F32, {2, 3}, path).to_vector<float>() ==
        std::vector<float>{-0.5f, -0.25f, 0.f, 0.25f, 0.5f, 0.75f});
  CHECK(st::require(f, "bias", st::DType::F32, {3}, path).to_vector<float>() == std::vector<float>{1.5f, -2.f, 3.25f});
  CHECK(st::require(f, "labels", st::DType::I64, {4}, path).to_vector<int64_t>() ==
        std::vector<int64_t>{0, -1, 7, int64_t(1) << 40});
  CHECK(st::require(f, "step", st::DType::I64, {}, path).to_vector<int64_t>() == std::vector<int64_t>{123456789012});

  // Both writers produce the same layout byte for byte.
  TempDir tmp;
  st::save(tmp / "again.safetensors", f);
  CHECK(read_bytes(tmp / "again.safetensors") == read_bytes(path));

  // A file for checking the other direction by hand (kept, overwritten each run):
  //   python3 tests/reference/safetensors_io.py /tmp/repq_st_cpp.safetensors
  st::save((fs::temp_directory_path() / "repq_st_cpp.safetensors").string(), sample_file());
}

TEST_CASE("remove_stale_temporaries: a killed writer's .tmp.<pid> goes, a live process's and other files stay") {
  const std::filesystem::path dir = fresh_temp_dir("stale-tmp");
  std::filesystem::create_directories(dir);
  const pid_t child = ::fork();
  if (child == 0) ::_exit(0);
  REQUIRE(child > 0);
  int status = 0;
  ::waitpid(child, &status, 0);  // now a pid of no process (until the system reuses it)
  const std::string dead = "last.safetensors.tmp." + std::to_string(child);
  const std::string live = "best.safetensors.tmp." + std::to_string(::getpid());
  for (const std::string& name : {dead, live, std::string("last.safetensors"), std::string("notes.tmp.x1")})
    std::ofstream(dir / name) << "x";
  CHECK(st::remove_stale_temporaries(dir.string()) == std::vector<std::string>{dead});
  CHECK(!std::filesystem::exists(dir / dead));
  for (const char* kept : {"last.safetensors", "notes.tmp.x1"}) CHECK(std::filesystem::exists(dir / kept));
  CHECK(std::filesystem::exists(dir / live));
  CHECK(st::remove_stale_temporaries((dir / "missing").string()).empty());
}
