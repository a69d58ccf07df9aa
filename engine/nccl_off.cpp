// Stand-ins for engine/cuda/nccl.cu when NCCL is not built (CUDA=0 or MPI=0, or nvcc, cuDNN or mpicxx not
// found): --device cuda under mpirun then fails at once with trainer.cpp's message.
#ifndef ENGINE_NCCL
#include "engine/cuda/nccl.h"
#include "engine/tensor.h"

namespace engine::cuda {

static void unavailable() {
  fail("this build has no NCCL: it needs both the CUDA backend and MPI (make CUDA=1 MPI=1, with nvcc, cuDNN "
       "and mpicxx found)");
}
bool nccl_built() { return false; }
void nccl_init() { unavailable(); }
void nccl_reserve_slots(size_t) { unavailable(); }
void nccl_start_allreduce(size_t, float*, size_t) { unavailable(); }
void nccl_wait(size_t) { unavailable(); }
void scale_on_device(float*, const float*, size_t, float) { unavailable(); }
void zero_on_device(float*, size_t) { unavailable(); }

}  // namespace engine::cuda
#endif
