// Shared test helpers: skip decorators that say why, paths to the real data, tolerances.
#pragma once
#include <doctest/doctest.h>
#include <string>

// Decorator for a test that needs something this machine may lack (real data, a GPU).
// `TEST_CASE("x" * skip_unless(have_gpu(), "no GPU"))` is counted by doctest as skipped and the reason is
// printed as a SKIPPED line at the end of the run; it is never counted as passed.
doctest::skip skip_unless(bool condition, const std::string& what);

// ../shared/data (as in CI, the checkout's sibling) or $REPQ_DATA. Empty when absent.
std::string shared_data_dir();
bool have_path(const std::string& path);
