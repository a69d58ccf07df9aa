// What the programs' mains share: run one library entry point on the command line; an error is printed
// as "NAME: message" and exits with status 2.
#pragma once
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

inline int run_program(const char* name, int (*run)(const std::vector<std::string>&), int argc, char** argv) {
  try {
    return run(std::vector<std::string>(argv + 1, argv + argc));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: %s\n", name, e.what());
    return 2;
  }
}
