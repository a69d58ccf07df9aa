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

void* alloc(size_t bytes);
void free(void* ptr, size_t bytes);
AllocStats alloc_stats();
void release_cached_memory();

void copy_to_device(void* dst, const void* src, size_t bytes);
void copy_to_host(void* dst, const void* src, size_t bytes);
void copy_on_device(void* dst, const void* src, size_t bytes);
void synchronize();           // waits for the queued GPU work (for timing); a no-op without a GPU

}  // namespace engine::cuda
