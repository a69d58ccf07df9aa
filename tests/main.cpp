// Test runner: doctest's main and a SKIPPED line for each test skipped for a missing resource;
// the helpers declared in tests/testing.h. `run_tests --train ARGS` is ./train ARGS instead (tests that
// kill a run start one so, in a child process); `run_tests --dist-check ...` is the helper that the
// data-parallel tests run under mpirun (tests/test_dist.cpp).
#define DOCTEST_CONFIG_IMPLEMENT
#include "tests/testing.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <future>
#include <vector>

#include "engine/random.h"
#include "trainer/cli.h"

static std::vector<std::string>& skipped() {
  static std::vector<std::string> s;
  return s;
}

doctest::skip skip_unless(bool condition, const std::string& what) {
  if (!condition) skipped().push_back(what);
  return doctest::skip(!condition);
}

bool have_path(const std::string& path) { return std::filesystem::exists(path); }

std::string shared_data_dir() {
  if (const char* env = std::getenv("REPQ_DATA")) return env;
  for (const char* p : {"../shared/data", "data"})
    if (have_path(std::string(p) + "/README.md") || have_path(std::string(p) + "/cifar-10-batches-bin")) return p;
  return "";
}

int main(int argc, char** argv) {
  if (argc > 1 && std::string(argv[1]) == "--train") return train::main(std::vector<std::string>(argv + 2, argv + argc));
  if (argc > 1 && std::string(argv[1]) == "--dist-check") return dist_check(std::vector<std::string>(argv + 2, argv + argc));
  doctest::Context ctx;
  ctx.applyCommandLine(argc, argv);
  int rc = ctx.run();
  for (auto& s : skipped()) std::printf("SKIPPED: %s\n", s.c_str());
  return rc;
}

std::filesystem::path fresh_temp_dir(const std::string& name) {
  std::filesystem::path p = std::filesystem::temp_directory_path() / ("repq_test_" + name + "_" + std::to_string(getpid()));
  std::filesystem::remove_all(p);
  return p;
}

std::filesystem::path make_cifar(const std::filesystem::path& dir, int per_batch, int test_records) {
  std::filesystem::create_directories(dir);
  engine::Rng rng(42);
  auto write = [&](const std::string& name, int records) {
    std::ofstream f(dir / name, std::ios::binary);
    for (int r = 0; r < records; r++) {
      f.put((char)(r % 10));
      for (int i = 0; i < 3072; i++) f.put((char)rng.below(256));
    }
  };
  for (int b = 1; b <= 5; b++) write("data_batch_" + std::to_string(b) + ".bin", per_batch);
  write("test_batch.bin", test_records);
  return dir;
}

std::string error_reading_fifo(const std::filesystem::path& fifo, const std::function<void()>& read) {
  std::filesystem::remove(fifo);
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
  auto done = std::async(std::launch::async, [&]() -> std::string {
    try {
      read();
    } catch (const std::exception& e) {
      return e.what();
    }
    return "";
  });
  if (done.wait_for(std::chrono::seconds(2)) == std::future_status::ready) return done.get();
  int fd = ::open(fifo.c_str(), O_WRONLY | O_NONBLOCK);  // lets a blocked open() return; closing: end of file
  if (fd >= 0) ::close(fd);
  done.wait();
  return "hung";
}
