// dist.h over Open MPI. MPI_Init runs only when mpirun started the process, so that a plain ./train
// (and the test suite) never starts MPI's runtime.
#ifdef ENGINE_MPI
// The C API alone: Open MPI's deprecated C++ bindings warn under -Wextra.
#define OMPI_SKIP_MPICXX 1
#include <mpi.h>

#include <algorithm>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine/dist.h"

namespace dist {

static bool g_started = false;
static int g_rank = 0, g_size = 1, g_local_size = 1, g_local_rank = 0;
static std::vector<MPI_Request> g_slots;
static double g_timeout = 1800;  // seconds; torch DDP's default
static std::vector<std::string> g_hosts;  // each rank's processor name

void abort_job(const std::string& why) {
  std::fprintf(stderr, "%s\n", why.c_str());
  std::fflush(stderr);
  if (g_started) MPI_Abort(MPI_COMM_WORLD, 1);
  std::exit(1);
}

static void check(int rc, const char* what) {
  if (rc == MPI_SUCCESS) return;
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, msg, &len);
  abort_job(std::string("rank ") + std::to_string(g_rank) + ": " + what + " failed: " + std::string(msg, len));
}

static void finalize() {
  if (!g_started) return;
  g_started = false;
  MPI_Finalize();
}

// MPI counts are int: larger buffers go in pieces (only the blocking calls; buckets are far smaller).
static int count_of(size_t n) {
  if (n > size_t(INT_MAX)) throw std::runtime_error("dist: a non-blocking all-reduce of more than 2^31 values");
  return int(n);
}

// MPI_Wait, but timed (dist::wait_until): polls with MPI_Test.
static void wait_for(MPI_Request& req, const char* what) {
  wait_until(what, [&] {
    int done = 0;
    check(MPI_Test(&req, &done, MPI_STATUS_IGNORE), what);
    return done != 0;
  }, [] {});
}

bool built() { return true; }

void set_timeout(double seconds) {
  if (!(seconds > 0)) throw std::invalid_argument("dist: the collective timeout must be positive, got " + std::to_string(seconds));
  g_timeout = seconds;
}

double timeout() { return g_timeout; }

void init() {
  if (g_started || !std::getenv("OMPI_COMM_WORLD_SIZE")) return;
  int provided = 0;
  check(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
  // Errors return codes (checked, then MPI_Abort) instead of MPI's default of aborting without a word.
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &g_size);
  if (const char* l = std::getenv("OMPI_COMM_WORLD_LOCAL_SIZE")) g_local_size = std::max(std::atoi(l), 1);
  if (const char* l = std::getenv("OMPI_COMM_WORLD_LOCAL_RANK")) g_local_rank = std::max(std::atoi(l), 0);
  g_started = true;
  std::atexit(finalize);
  char name[MPI_MAX_PROCESSOR_NAME] = {};
  int len = 0;
  check(MPI_Get_processor_name(name, &len), "MPI_Get_processor_name");
  std::vector<char> all(size_t(g_size) * MPI_MAX_PROCESSOR_NAME);
  check(MPI_Allgather(name, MPI_MAX_PROCESSOR_NAME, MPI_CHAR, all.data(), MPI_MAX_PROCESSOR_NAME, MPI_CHAR, MPI_COMM_WORLD),
        "MPI_Allgather");
  for (int r = 0; r < g_size; r++) g_hosts.emplace_back(&all[size_t(r) * MPI_MAX_PROCESSOR_NAME]);
}

std::string whereabouts() {
  return "rank " + std::to_string(g_rank) + (g_hosts.empty() ? "" : " on " + g_hosts.at(g_rank));
}

std::string peers() {
  std::string s;
  for (int r = 0; r < (int)g_hosts.size(); r++)
    if (r != g_rank) s += (s.empty() ? "" : ", ") + std::to_string(r) + " on " + g_hosts[r];
  return s;
}

int rank() { return g_rank; }
int size() { return g_size; }
int local_size() { return g_local_size; }
int local_rank() { return g_local_rank; }
bool distributed() { return g_size > 1; }

template <class T>
static void allreduce(T* data, size_t n, MPI_Datatype type) {
  if (!distributed()) return;
  for (size_t done = 0; done < n;) {
    const size_t part = std::min(n - done, size_t(INT_MAX));
    MPI_Request req;
    check(MPI_Iallreduce(MPI_IN_PLACE, data + done, int(part), type, MPI_SUM, MPI_COMM_WORLD, &req), "MPI_Iallreduce");
    wait_for(req, "MPI_Iallreduce");
    done += part;
  }
}
void allreduce_sum(double* data, size_t n) { allreduce(data, n, MPI_DOUBLE); }
void allreduce_sum(float* data, size_t n) { allreduce(data, n, MPI_FLOAT); }

void broadcast(void* data, size_t bytes, int root) {
  if (!distributed()) return;
  char* p = static_cast<char*>(data);
  for (size_t done = 0; done < bytes;) {
    const size_t part = std::min(bytes - done, size_t(INT_MAX));
    MPI_Request req;
    check(MPI_Ibcast(p + done, int(part), MPI_BYTE, root, MPI_COMM_WORLD, &req), "MPI_Ibcast");
    wait_for(req, "MPI_Ibcast");
    done += part;
  }
}

void barrier() {
  if (!distributed()) return;
  MPI_Request req;
  check(MPI_Ibarrier(MPI_COMM_WORLD, &req), "MPI_Ibarrier");
  wait_for(req, "MPI_Ibarrier");
}

void reserve_slots(size_t n) {
  if (g_slots.size() < n) g_slots.resize(n, MPI_REQUEST_NULL);
}

void start_allreduce(size_t slot, float* data, size_t n) {
  if (!distributed()) return;
  check(MPI_Iallreduce(MPI_IN_PLACE, data, count_of(n), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD, &g_slots.at(slot)),
        "MPI_Iallreduce");
}

bool test(size_t slot) {
  int done = 1;
  if (g_slots.at(slot) != MPI_REQUEST_NULL) check(MPI_Test(&g_slots[slot], &done, MPI_STATUS_IGNORE), "MPI_Test");
  return done != 0;
}

void wait(size_t slot) {
  if (g_slots.at(slot) != MPI_REQUEST_NULL) wait_for(g_slots[slot], "the gradient all-reduce (MPI_Iallreduce)");
}

}  // namespace dist
#endif
