// ./train's command line: what apps/train.cpp runs, and what the suite runs in a child process
// (`run_tests --train ARGS`, tests/main.cpp) to kill it.
#pragma once
#include <string>
#include <vector>

namespace train {

// ./train ARGS (without the program name): --help, --summary, or a run. Returns the exit status; an error
// is printed as "train: <message>" and returns 2.
int main(const std::vector<std::string>& args);

}  // namespace train
