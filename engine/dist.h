// Processes for data-parallel training: Open MPI when the program was started by mpirun, else a world
// of one process. Built with MPI when the Makefile finds mpicxx (engine/dist_mpi.cpp); otherwise
// engine/dist_off.cpp provides the same functions for a world of one, and init() refuses to run under
// mpirun, where N copies would each train alone.
//
//   dist::init();                 // MPI_Init when launched by mpirun (OMPI_COMM_WORLD_SIZE is set)
//   dist::allreduce_sum(v, 3);    // a no-op in a world of one
//
// Every collective must be called by every rank in the same order. A rank that dies ends the job:
// mpirun kills the others when one exits with a non-zero status or a signal (docs/distributed.md). An
// MPI error ends the job too (MPI_Abort), with the rank and the call named, and so does a collective
// that has not completed within the timeout (a rank hung without dying).
#pragma once
#include <sched.h>

#include <chrono>
#include <cstddef>
#include <string>

namespace dist {

bool built();          // compiled with MPI
void init();           // idempotent; a world of one unless launched by mpirun (MPI_Finalize at exit)
int rank();            // 0 in a world of one
int size();            // 1 in a world of one
int local_size();      // the ranks on this machine
int local_rank();      // this rank's index among them (Open MPI's OMPI_COMM_WORLD_LOCAL_RANK); 0 in a world of one
bool distributed();    // size() > 1
// Where the ranks run, for messages: "rank 0 on h1" (this one), "1 on h2, 2 on h2" (the others), each
// host its MPI processor name (the host name); "" in a world of one.
std::string whereabouts();
std::string peers();
// A collective that waits longer than this ends the job with a message (default 1800 s, torch DDP's).
void set_timeout(double seconds);
double timeout();
// Prints `why` and ends every rank (MPI_Abort; exit(1) in a world of one).
[[noreturn]] void abort_job(const std::string& why);

// Every wait for a collective, MPI's (engine/dist_mpi.cpp) and NCCL's (engine/cuda/nccl.cu), goes through
// here: a blocking wait would hang forever on a rank that hangs without dying (stopped, deadlocked), so
// this polls done() and, after timeout() seconds without completion, calls on_timeout() (NCCL aborts its
// communicator) and ends the job with "rank R on HOST: WHAT has not completed in S s (--dist-timeout): ...",
// naming the other ranks and their hosts.
// Open MPI moves a large collective on only inside such calls, fragment by fragment, so the loop does
// not sleep; after the first millisecond it yields the core between polls (as MPI_Wait does when ranks
// share cores).
template <class Done, class OnTimeout>
void wait_until(const char* what, Done done, OnTimeout on_timeout) {
  using clock = std::chrono::steady_clock;
  const clock::time_point t0 = clock::now();
  while (!done()) {
    const double waited = std::chrono::duration<double>(clock::now() - t0).count();
    if (waited > timeout()) {
      on_timeout();
      abort_job(whereabouts() + ": " + what + " has not completed in " + std::to_string(int(timeout())) +
                " s (--dist-timeout): another rank is hung or stopped, or the link to its host is down (the others: " +
                peers() + "); ending the job");
    }
    if (waited > 1e-3) sched_yield();
  }
}

// Blocking collectives over all ranks (no-ops in a world of one).
void broadcast(void* data, size_t bytes, int root = 0);
void allreduce_sum(double* data, size_t n);
void allreduce_sum(float* data, size_t n);
void barrier();

// Non-blocking all-reduce (sum, in place) of float buffers, one per slot: start(slot, ...) begins it,
// test(slot) lets it progress and says whether it is done, wait(slot) blocks until it is. Slots are
// made once by reserve_slots (no allocation per call). A slot holds one operation at a time.
void reserve_slots(size_t n);
void start_allreduce(size_t slot, float* data, size_t n);
bool test(size_t slot);
void wait(size_t slot);

}  // namespace dist
