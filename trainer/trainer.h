// ./train's loop: builds the model, data, optimizer and schedule from the options, trains epoch by
// epoch, evaluates, logs and checkpoints into the run folder, and resumes from one.
#pragma once
#include <string>

#include "trainer/options.h"

namespace train {

// Exit status of a run: 0 done, 130 interrupted (Ctrl-C; last.safetensors written), 3 stopped on a
// non-finite loss (the last good checkpoint kept). Errors in the inputs throw std::runtime_error.
int run_training(Options opt, const std::vector<std::string>& argv);

// Ctrl-C (or SIGUSR1, which mpirun forwards to every rank): the running step finishes, last.safetensors
// is written, and run_training returns 130.
void install_interrupt_handler();
void request_interrupt();  // what the handler does (tests call it)

}  // namespace train
