#include "trainer/cli.h"

#include <cstdio>
#include <exception>
#include <stdexcept>

#include "engine/dist.h"
#include "models/repvgg.h"
#include "trainer/options.h"
#include "trainer/trainer.h"

namespace train {

static int print_summary(const Options& opt) {
  const models::ArchConfig a = models::arch_config(opt.arch);
  const models::ModelSize t = models::model_size(a, false, a.resolution), d = models::model_size(a, true, a.resolution);
  std::printf("%s at %dx%d: training form %.3f M parameters, %.3f G MACs; deploy form %.3f M parameters, %.3f G MACs\n",
              opt.arch.c_str(), a.resolution, a.resolution, t.params / 1e6, t.macs / 1e9, d.params / 1e6, d.macs / 1e9);
  return 0;
}

int main(const std::vector<std::string>& args) {
  try {
    Options opt = parse_options(args);
    if (opt.help) {
      std::fputs(help_text().c_str(), stdout);
      return 0;
    }
    if (opt.summary) return print_summary(opt);
    install_interrupt_handler();
    dist::init();
    // The other ranks' progress is rank 0's: only rank 0 prints it (errors go to stderr from any rank).
    if (dist::rank() != 0 && !std::freopen("/dev/null", "w", stdout)) throw std::runtime_error("cannot silence stdout");
    return run_training(opt, args);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "train: %s\n", e.what());
    return 2;
  }
}

}  // namespace train
