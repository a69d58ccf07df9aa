// The CUDA backend's entry points, called from the device-generic code in engine/. Built from
// engine/cuda/*.cu when the Makefile finds nvcc and cuDNN; otherwise engine/cuda_off.cpp provides the
// same functions, each failing with a clear message.
#pragma once
#include <cstddef>
#include <string>

#include "engine/allocator.h"

namespace engine::cuda {

bool built();                 // compiled with the CUDA backend
bool available();             // built, and a GPU is present at run time
std::string unavailable_reason();  // why not, for error messages
void require();               // fails with unavailable_reason() unless available()
int device_count();           // GPUs the driver reports; 0 without a GPU or without the backend

// Under mpirun, one GPU per rank: GPU local_rank % device_count() becomes the process's device. Call it
// before any other CUDA work (the stream and handles are made on the device current at the first call);
// fails if the runtime already started on another device, or if this machine has fewer GPUs than ranks
// (NCCL takes one GPU per rank). A no-op without a GPU (require() then says why).
void select_device(int local_rank, int local_size);

void* alloc(size_t bytes);
void free(void* ptr, size_t bytes);
AllocStats alloc_stats();
void release_cached_memory();

void copy_to_device(void* dst, const void* src, size_t bytes);
void copy_to_host(void* dst, const void* src, size_t bytes);
void copy_on_device(void* dst, const void* src, size_t bytes);
void synchronize();           // waits for the queued GPU work (for timing); a no-op without a GPU

}  // namespace engine::cuda
