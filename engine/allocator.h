// A caching allocator: freed blocks go to a free list keyed by size and are handed out again, so a
// training step that repeats the same shapes allocates nothing from the system after its first run.
// The counters let tests and benchmarks prove it.
#pragma once
#include <cstddef>
#include <cstdint>

#include "engine/tensor.h"

namespace engine {

struct AllocStats {
  uint64_t system_allocs = 0;  // blocks obtained from the system (cache misses)
  uint64_t cache_hits = 0;     // blocks reused from the free lists
  uint64_t bytes_in_use = 0;
  uint64_t bytes_cached = 0;   // freed, kept for reuse
};

void* device_alloc(size_t bytes, Device device);
void device_free(void* ptr, size_t bytes, Device device);
AllocStats alloc_stats(Device device = Device::cpu);
void release_cached_memory(Device device = Device::cpu);  // return free blocks to the system

}  // namespace engine
