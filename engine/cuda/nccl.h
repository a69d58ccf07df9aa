// NCCL over the ranks of engine/dist.h, for the gradient all-reduce of `mpirun -np N ./train --device
// cuda` (engine/reducer.h). Built when the Makefile builds both the CUDA backend and MPI (ENGINE_NCCL;
// NCCL's unique id travels over MPI): engine/cuda/nccl.cu. Otherwise engine/nccl_off.cpp provides the
// same functions, each failing with a clear message, and nccl_built() is false.
//
//   cuda::select_device(dist::local_rank(), dist::local_size());  // before any CUDA work
//   cuda::nccl_init();                 // collective: rank 0's ncclGetUniqueId, broadcast, ncclCommInitRank
//   cuda::nccl_start_allreduce(0, p, n);  // after the work queued on the compute stream so far
//   cuda::nccl_wait(0);                // the compute stream's later work sees the sum
//
// Every NCCL and CUDA error throws, naming the rank and the call. The communicator is destroyed at exit.
#pragma once
#include <cstddef>

namespace engine::cuda {

bool nccl_built();
void nccl_init();  // idempotent; every rank must call it (in a world of one it makes a communicator of one)

// Non-blocking all-reduce (sum, in place) of float device buffers, one per slot, as dist.h's slots: it runs
// on a communication stream that first waits (an event) for the work queued so far on the compute stream,
// so it overlaps the kernels queued after it. wait(slot) makes the compute stream wait for it and blocks
// the host until it is done. Slots (streams' events) are made once by nccl_reserve_slots.
void nccl_reserve_slots(size_t n);
void nccl_start_allreduce(size_t slot, float* data, size_t n);
void nccl_wait(size_t slot);

// On the compute stream, for the reducer: dst[i] = src[i] * scale (the float product, as the CPU's loop);
// and n zeros.
void scale_on_device(float* dst, const float* src, size_t n, float scale);
void zero_on_device(float* dst, size_t n);

}  // namespace engine::cuda
