#include "engine/allocator.h"

#include <fmt/format.h>

#include <cstdlib>
#include <stdexcept>
#include <mutex>
#include <new>
#include <unordered_map>
#include <vector>

#include "engine/cuda/cuda_backend.h"

namespace engine {

namespace {

// Sizes are rounded up to 64 bytes (a cache line, and oneDNN's preferred alignment).
size_t round_up(size_t bytes) { return (bytes + 63) / 64 * 64; }

struct CpuCache {
  std::mutex mu;
  std::unordered_map<size_t, std::vector<void*>> free_blocks;
  AllocStats stats;
};

CpuCache& cpu_cache() {
  static CpuCache* c = new CpuCache;  // never destroyed: tensors may outlive static destruction order
  return *c;
}

}  // namespace

void* device_alloc(size_t bytes, Device device) {
  if (device == Device::cuda) return cuda::alloc(bytes);
  size_t size = round_up(bytes == 0 ? 1 : bytes);
  CpuCache& c = cpu_cache();
  {
    std::lock_guard<std::mutex> lock(c.mu);
    auto it = c.free_blocks.find(size);
    c.stats.bytes_in_use += size;
    if (it != c.free_blocks.end() && !it->second.empty()) {
      void* p = it->second.back();
      it->second.pop_back();
      c.stats.cache_hits++;
      c.stats.bytes_cached -= size;
      return p;
    }
    c.stats.system_allocs++;
  }
  void* p = std::aligned_alloc(64, size);
  if (!p) {  // as PyTorch's caching allocator: give the cached blocks back and try once more
    release_cached_memory(Device::cpu);
    p = std::aligned_alloc(64, size);
  }
  if (!p) {
    std::lock_guard<std::mutex> lock(c.mu);
    c.stats.bytes_in_use -= size;
    throw std::runtime_error(fmt::format("out of memory: a tensor of {:.2f} GB could not be allocated ({:.2f} GB held by "
                                         "other tensors); a smaller --batch-size (or image size) needs less",
                                         size / 1e9, c.stats.bytes_in_use / 1e9));
  }
  return p;
}

void device_free(void* ptr, size_t bytes, Device device) {
  if (!ptr) return;
  if (device == Device::cuda) return cuda::free(ptr, bytes);
  size_t size = round_up(bytes == 0 ? 1 : bytes);
  CpuCache& c = cpu_cache();
  std::lock_guard<std::mutex> lock(c.mu);
  c.free_blocks[size].push_back(ptr);
  c.stats.bytes_in_use -= size;
  c.stats.bytes_cached += size;
}

AllocStats alloc_stats(Device device) {
  if (device == Device::cuda) return cuda::alloc_stats();
  CpuCache& c = cpu_cache();
  std::lock_guard<std::mutex> lock(c.mu);
  return c.stats;
}

void release_cached_memory(Device device) {
  if (device == Device::cuda) return cuda::release_cached_memory();
  CpuCache& c = cpu_cache();
  std::lock_guard<std::mutex> lock(c.mu);
  for (auto& [size, blocks] : c.free_blocks)
    for (void* p : blocks) std::free(p);
  c.free_blocks.clear();
  c.stats.bytes_cached = 0;
}

}  // namespace engine
