// engine/cuda/nccl.h over NCCL, bootstrapped over MPI: rank 0 makes the unique id, dist::broadcast hands it
// to every rank, each makes its communicator on its GPU (cuda::select_device, before). One communication
// stream carries every all-reduce, in the order started (the same on every rank, as NCCL needs); events
// order it after the compute stream's copies into the buckets, and the compute stream after it.
#ifdef ENGINE_NCCL
#include <nccl.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "engine/cuda/common.cuh"
#include "engine/cuda/nccl.h"
#include "engine/dist.h"

namespace engine::cuda {
namespace {

ncclComm_t g_comm = nullptr;
cudaStream_t g_comm_stream = nullptr;
struct Slot {
  cudaEvent_t queued = nullptr;  // on the compute stream: the bucket's copies are queued before it
  cudaEvent_t done = nullptr;    // on the communication stream: the all-reduce is queued before it
  bool pending = false;          // started, not waited for
};
std::vector<Slot> g_slots;

std::string failed(const char* call) { return "rank " + std::to_string(dist::rank()) + ": " + call + " failed: "; }

void check(ncclResult_t r, const char* call) {
  if (r == ncclSuccess) return;
  std::string why = failed(call) + ncclGetErrorString(r);
  if (const char* last = ncclGetLastError(g_comm); last && *last) why += std::string(" (") + last + ")";
  fail(why);
}
void check(cudaError_t e, const char* call) {
  if (e == cudaSuccess) return;
  (void)cudaGetLastError();
  fail(failed(call) + cudaGetErrorString(e));
}

// At exit (atexit, so after every step): nothing may throw here. An all-reduce still pending means this
// rank is leaving on an error, its peers perhaps never joining it: abort the communicator instead of
// waiting for the operation (mpirun then ends the others, as on the CPU path).
void destroy() {
  if (!g_comm) return;
  bool pending = false;
  for (const Slot& s : g_slots) pending |= s.pending;
  const ncclResult_t r = pending ? ncclCommAbort(g_comm) : ncclCommDestroy(g_comm);
  g_comm = nullptr;
  if (r != ncclSuccess)
    std::fprintf(stderr, "rank %d: at exit, %s failed: %s\n", dist::rank(), pending ? "ncclCommAbort" : "ncclCommDestroy",
                 ncclGetErrorString(r));
}

__global__ void scale_kernel(float* dst, const float* src, int64_t n, float scale) {
  GRID_STRIDE(i, n) dst[i] = src[i] * scale;
}

}  // namespace

bool nccl_built() { return true; }

void nccl_init() {
  if (g_comm) return;
  require();  // the runtime, its stream on the device select_device chose
  ncclUniqueId id{};
  if (dist::rank() == 0) check(ncclGetUniqueId(&id), "ncclGetUniqueId");
  dist::broadcast(&id, sizeof id);
  int device = -1;
  check(cudaGetDevice(&device), "cudaGetDevice");
  const std::string call = "ncclCommInitRank (GPU " + std::to_string(device) + ", " + std::to_string(dist::size()) + " ranks)";
  check(ncclCommInitRank(&g_comm, dist::size(), id, dist::rank()), call.c_str());
  check(cudaStreamCreateWithFlags(&g_comm_stream, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
  std::atexit(destroy);
}

void nccl_reserve_slots(size_t n) {
  while (g_slots.size() < n) {
    Slot s;
    check(cudaEventCreateWithFlags(&s.queued, cudaEventDisableTiming), "cudaEventCreateWithFlags");
    check(cudaEventCreateWithFlags(&s.done, cudaEventDisableTiming), "cudaEventCreateWithFlags");
    g_slots.push_back(s);
  }
}

void nccl_start_allreduce(size_t slot, float* data, size_t n) {
  if (!g_comm) fail("nccl_start_allreduce before nccl_init");
  Slot& s = g_slots.at(slot);
  check(cudaEventRecord(s.queued, stream()), "cudaEventRecord");
  check(cudaStreamWaitEvent(g_comm_stream, s.queued, 0), "cudaStreamWaitEvent");
  check(ncclAllReduce(data, data, n, ncclFloat32, ncclSum, g_comm, g_comm_stream), "ncclAllReduce");
  check(cudaEventRecord(s.done, g_comm_stream), "cudaEventRecord");
  s.pending = true;
}

// Polls (dist::wait_until) instead of cudaEventSynchronize, which would wait forever for a peer that hangs
// without dying: an asynchronous NCCL error (a peer's connection lost) or dist::timeout() seconds without
// completion aborts the communicator (ncclCommAbort ends the operations still queued) and ends the job.
void nccl_wait(size_t slot) {
  Slot& s = g_slots.at(slot);
  if (!s.pending) return;
  check(cudaStreamWaitEvent(stream(), s.done, 0), "cudaStreamWaitEvent");
  const auto abort_comm = [] {
    (void)ncclCommAbort(g_comm);
    g_comm = nullptr;
  };
  dist::wait_until("the gradient all-reduce (ncclAllReduce)", [&] {
    const cudaError_t e = cudaEventQuery(s.done);
    if (e == cudaSuccess) return true;
    if (e != cudaErrorNotReady) check(e, "cudaEventQuery (an all-reduce)");
    ncclResult_t async = ncclSuccess;
    check(ncclCommGetAsyncError(g_comm, &async), "ncclCommGetAsyncError");
    if (async != ncclSuccess) {
      const std::string why = failed("ncclAllReduce") + ncclGetErrorString(async) + "; ending the job";
      abort_comm();
      dist::abort_job(why);
    }
    return false;
  }, abort_comm);
  s.pending = false;
}

void scale_on_device(float* dst, const float* src, size_t n, float scale) {
  if (n > 0) LAUNCH(scale_kernel, blocks_for(int64_t(n)), kThreads, dst, src, int64_t(n), scale);
}

void zero_on_device(float* dst, size_t n) {
  if (n > 0) check(cudaMemsetAsync(dst, 0, n * sizeof(float), stream()), "cudaMemsetAsync");
}

}  // namespace engine::cuda
#endif
