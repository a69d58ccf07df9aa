// ./summary --arch repvgg-a0 | --all
// Parameter counts (training and deploy form) and multiply-accumulates per image at the arch's input
// size (224, or 32 for the CIFAR models), computed from the structure without building the model.
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "models/arch.h"

static void print_row(const std::string& name) {
  const models::ArchConfig a = models::arch_config(name);
  const models::ModelSize t = models::model_size(a, false, a.resolution), d = models::model_size(a, true, a.resolution);
  std::printf("%-24s %4d %12.3f %12.3f %12.3f %12.3f\n", name.c_str(), a.resolution, t.params / 1e6, d.params / 1e6,
              t.macs / 1e9, d.macs / 1e9);
}

int main(int argc, char** argv) {
  std::vector<std::string> archs;
  for (int i = 1; i < argc; i++) {
    if (!std::strcmp(argv[i], "--all")) archs = models::arch_names();
    else if (!std::strcmp(argv[i], "--arch") && i + 1 < argc) archs.push_back(argv[++i]);
    else {
      std::fprintf(stderr, "usage: %s --arch NAME | --all\n", argv[0]);
      return 2;
    }
  }
  if (archs.empty()) {
    std::fprintf(stderr, "usage: %s --arch NAME | --all\n", argv[0]);
    return 2;
  }
  std::printf("%-24s %4s %12s %12s %12s %12s\n", "arch", "res", "train_Mparam", "deploy_Mparam", "train_GMAC",
              "deploy_GMAC");
  try {
    for (auto& name : archs) print_row(name);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "summary: %s\n", e.what());
    return 1;
  }
  return 0;
}
