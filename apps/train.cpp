// ./train DATASET [options]: see trainer/options.cpp for the options and their defaults, or --help.
#include <string>
#include <vector>

#include "trainer/cli.h"

int main(int argc, char** argv) { return train::main(std::vector<std::string>(argv + 1, argv + argc)); }
