// A world of one process, for builds without MPI (no mpicxx found, or MPI=0).
#ifndef ENGINE_MPI
#include <cstdio>
#include <cstdlib>
#include <stdexcept>

#include "engine/dist.h"

namespace dist {

bool built() { return false; }
void set_timeout(double) {}
double timeout() { return 1800; }
void abort_job(const std::string& why) {
  std::fprintf(stderr, "%s\n", why.c_str());
  std::exit(1);
}
void init() {
  // Under mpirun each copy would train alone on the whole data set and all write the same run folder.
  if (const char* n = std::getenv("OMPI_COMM_WORLD_SIZE"); n && std::atoi(n) > 1)
    throw std::runtime_error("started by mpirun, but this build has no MPI (mpicxx was not found, or MPI=0); "
                             "install libopenmpi-dev and rebuild");
}
int rank() { return 0; }
std::string whereabouts() { return "rank 0"; }
std::string peers() { return ""; }
int size() { return 1; }
int local_size() { return 1; }
int local_rank() { return 0; }
bool distributed() { return false; }
void broadcast(void*, size_t, int) {}
void allreduce_sum(double*, size_t) {}
void allreduce_sum(float*, size_t) {}
void barrier() {}
void reserve_slots(size_t) {}
void start_allreduce(size_t, float*, size_t) {}
bool test(size_t) { return true; }
void wait(size_t) {}

}  // namespace dist
#endif
