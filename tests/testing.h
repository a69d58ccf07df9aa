// Shared test helpers: skip decorators that say why, paths to the real data, a made-up CIFAR-10 folder.
#pragma once
#include <doctest/doctest.h>

#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "engine/kernels.h"
#include "engine/ops.h"

// Decorator for a test that needs something this machine may lack (real data, a GPU).
// `TEST_CASE("x" * skip_unless(have_gpu(), "no GPU"))` is counted by doctest as skipped and the reason is
// printed as a SKIPPED line at the end of the run; it is never counted as passed.
// One per test: doctest keeps only the last skip decorator, so `a * b` runs the test when b holds and a
// does not; give one skip_unless the conjunction.
doctest::skip skip_unless(bool condition, const std::string& what);

// True in the sanitizer build (`make test SANITIZE=1`), where our own loops run ~20x slower: the one test
// that trains for minutes is skipped there (its code paths are every training test's).
#ifdef __SANITIZE_ADDRESS__
constexpr bool kSanitized = true;
#else
constexpr bool kSanitized = false;
#endif

// ../shared/data (as in CI, the checkout's sibling) or $REPQ_DATA. Empty when absent.
std::string shared_data_dir();
bool have_path(const std::string& path);

// An empty folder for one test: <tmp>/repq_test_<name>_<pid>, whatever was there removed.
std::filesystem::path fresh_temp_dir(const std::string& name);

// An RGB PNG of h x w pixels of a pattern that `seed` shifts, its folders made (tests/test_data.cpp).
void write_png(const std::string& path, int h, int w, int seed = 0);

// A CIFAR-10 folder in the official binary layout: `per_batch` random records in each of data_batch_1..5.bin
// and `test_records` in test_batch.bin, labels r % 10, pixels from a fixed seed.
std::filesystem::path make_cifar(const std::filesystem::path& dir, int per_batch, int test_records);

// Makes a FIFO at `fifo` and runs `read` (which should refuse it) on another thread. Returns the message
// it threw, "" when it returned, or "hung" when it was still blocked after 2 s; then the FIFO is opened for
// writing, which releases a reader stuck in open(), so that a failing test ends.
// `run_tests --dist-check ARGS`: the processes of the data-parallel tests (tests/test_dist.cpp).
int dist_check(const std::vector<std::string>& args);

std::string error_reading_fifo(const std::filesystem::path& fifo, const std::function<void()>& read);

// Sets the engine's activation block (engine/ops.h, the activation layout) for one scope, then restores
// it: a layout case runs in NCHW, blocks of 8 and blocks of 16 on any machine.
struct BlockGuard {
  int64_t saved = engine::activation_block();
  explicit BlockGuard(int64_t block) { engine::set_activation_block(block); }
  ~BlockGuard() { engine::set_activation_block(saved); }
};

// A tolerance for results that pass through 3x3 stride-1 convolutions: `direct` for oneDNN's kernels, `winograd`
// where ours may run instead (cpu::conv_own_winograd(): CPUs without oneDNN's Winograd, e.g. AVX2), whose
// F(4x4, 3x3) rounds a few times more than a direct convolution (its transforms' coefficients reach 8 and 1/24).
inline double conv_tolerance(double direct, double winograd) {
  return engine::cpu::conv_own_winograd() ? winograd : direct;
}
