// The timing of dev/'s experiments: the median of 5 timed calls after 2 untimed ones, in seconds.
#pragma once
#include <algorithm>
#include <chrono>
#include <vector>

template <class F>
double time_median(F f) {
  f();
  f();
  std::vector<double> t;
  for (int i = 0; i < 5; i++) {
    auto t0 = std::chrono::steady_clock::now();
    f();
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(t.begin(), t.end());
  return t[2];
}
