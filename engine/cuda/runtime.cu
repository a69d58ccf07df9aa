// The CUDA runtime of the engine: whether a usable GPU is there (and why not), the one stream with the
// cuDNN and cuBLAS handles bound to it, the caching allocator for device memory (the CPU one's design,
// engine/allocator.cpp, over plain cudaMalloc) and the copies between host and device.
#include <mutex>
#include <stdexcept>
#include <unordered_map>
#include <vector>

#include "engine/cuda/common.cuh"

namespace engine::cuda {

void throw_error(const char* file, int line, const char* what, const std::string& message) {
  throw std::runtime_error(std::string(file) + ":" + std::to_string(line) + ": " + what + ": " + message);
}

namespace {

__global__ void probe_kernel() {}

struct Runtime {
  bool ok = false;
  std::string reason;  // why not ok
  cudaStream_t stream = nullptr;
  cudnnHandle_t cudnn = nullptr;
  cublasHandle_t cublas = nullptr;
};

// Finds the GPU and creates the stream and handles, or says why it cannot.
void init(Runtime& r) {
  int count = 0;
  cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess || count == 0) {
    r.reason = "no CUDA GPU: ";
    if (e == cudaErrorInsufficientDriver)
      r.reason += "no NVIDIA driver, or one too old for CUDA " + std::to_string(CUDART_VERSION / 1000) + " (";
    else if (e == cudaSuccess || e == cudaErrorNoDevice)
      r.reason += "the driver reports no device (";
    else
      r.reason += "the CUDA runtime cannot start (";
    r.reason += std::string("cudaGetDeviceCount: ") + cudaGetErrorString(e) + ")";
    (void)cudaGetLastError();  // reset the last-error state
    return;
  }
  cudaDeviceProp prop;
  cudaFuncAttributes attr;
  if (cudaGetDeviceProperties(&prop, 0) == cudaSuccess && cudaFuncGetAttributes(&attr, probe_kernel) != cudaSuccess) {
    (void)cudaGetLastError();
    r.reason = std::string("the CUDA backend has no kernels for this GPU (") + prop.name + ", sm_" +
               std::to_string(prop.major * 10 + prop.minor) + "): it is built for sm_80 and sm_90 (Makefile NVFLAGS)";
    return;
  }
  if (cudnnGetVersion() / 10000 != CUDNN_MAJOR) {
    r.reason = "a CUDA GPU is present but the cuDNN library found at run time is version " +
               std::to_string(cudnnGetVersion()) + ", the engine was built with cuDNN " + std::to_string(CUDNN_MAJOR);
    return;
  }
  cudnnStatus_t s = cudnnCreate(&r.cudnn);
  if (s != CUDNN_STATUS_SUCCESS) {
    r.reason = std::string("a CUDA GPU is present but cuDNN could not be initialised (cudnnCreate: ") +
               cudnnGetErrorString(s) + "); install cuDNN " + std::to_string(CUDNN_MAJOR) + " for this CUDA version";
    return;
  }
  cublasStatus_t b = cublasCreate(&r.cublas);
  if (b != CUBLAS_STATUS_SUCCESS) {
    r.reason = std::string("a CUDA GPU is present but cuBLAS could not be initialised (cublasCreate: ") +
               cublasGetStatusString(b) + ")";
    return;
  }
  CUDA_CHECK(cudaStreamCreate(&r.stream));
  CUDNN_CHECK(cudnnSetStream(r.cudnn, r.stream));
  CUBLAS_CHECK(cublasSetStream(r.cublas, r.stream));
  CUBLAS_CHECK(cublasSetMathMode(r.cublas, CUBLAS_DEFAULT_MATH));  // full fp32 GEMMs, no TF32
  r.ok = true;
}

bool g_runtime_started = false;  // the stream and handles exist, on the device current then

Runtime& runtime() {
  static Runtime* r = [] {  // never destroyed: tensors may outlive static destruction order
    auto* r = new Runtime;
    g_runtime_started = true;
    init(*r);
    return r;
  }();
  return *r;
}

// --- caching allocator: exact-size free lists, as the CPU one ------------------------------------------

// Sizes are rounded up to 256 bytes (cudaMalloc's alignment).
size_t round_up(size_t bytes) { return (bytes + 255) / 256 * 256; }

struct DeviceCache {
  std::mutex mu;
  std::unordered_map<size_t, std::vector<void*>> free_blocks;
  AllocStats stats;
};

DeviceCache& device_cache() {
  static DeviceCache* c = new DeviceCache;
  return *c;
}

}  // namespace

bool built() { return true; }
bool available() { return runtime().ok; }
std::string unavailable_reason() { return available() ? "" : runtime().reason; }
void require() {
  if (!available()) fail(runtime().reason);
}

int device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return count;
}

void select_device(int local_rank, int local_size) {
  const int count = device_count();
  if (count == 0) return;  // require() says why
  if (local_size > count)
    fail(std::to_string(local_size) + " ranks on this machine but " + std::to_string(count) +
         " GPUs: --device cuda under mpirun takes one GPU per rank (NCCL refuses two ranks on one GPU); "
         "start at most " + std::to_string(count) + " ranks per machine");
  const int want = local_rank % count;
  if (g_runtime_started) {
    int current = -1;
    CUDA_CHECK(cudaGetDevice(&current));
    if (current != want)
      fail("select_device(" + std::to_string(want) + ") after the CUDA runtime started on GPU " + std::to_string(current));
    return;
  }
  const cudaError_t e = cudaSetDevice(want);
  if (e != cudaSuccess)
    fail("local rank " + std::to_string(local_rank) + ": cudaSetDevice(" + std::to_string(want) + ") of " +
         std::to_string(count) + " GPUs failed: " + cudaGetErrorString(e));
}

cudaStream_t stream() {
  require();
  return runtime().stream;
}
cudnnHandle_t cudnn() {
  require();
  return runtime().cudnn;
}
cublasHandle_t cublas() {
  require();
  return runtime().cublas;
}

void synchronize() {
  if (available()) CUDA_CHECK(cudaStreamSynchronize(stream()));
}

// Blocks freed here are handed out again by alloc without synchronizing: every kernel runs on the one
// stream, so a later user of a block is ordered after the work that used it before.
void* alloc(size_t bytes) {
  require();
  const size_t size = round_up(bytes == 0 ? 1 : bytes);
  DeviceCache& c = device_cache();
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
  void* p = nullptr;
  cudaError_t e = cudaMalloc(&p, size);
  if (e == cudaErrorMemoryAllocation) {  // out of memory: give the cached blocks back and try once more
    (void)cudaGetLastError();
    release_cached_memory();
    e = cudaMalloc(&p, size);
  }
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    {
      std::lock_guard<std::mutex> lock(c.mu);
      c.stats.bytes_in_use -= size;
    }
    AllocStats st = alloc_stats();
    throw_error(__FILE__, __LINE__, "cudaMalloc",
                std::string(cudaGetErrorString(e)) + " (" + std::to_string(size) + " bytes asked, " +
                    std::to_string(st.bytes_in_use) + " in use by tensors)");
  }
  return p;
}

void free(void* ptr, size_t bytes) {
  if (!ptr) return;
  const size_t size = round_up(bytes == 0 ? 1 : bytes);
  DeviceCache& c = device_cache();
  std::lock_guard<std::mutex> lock(c.mu);
  c.free_blocks[size].push_back(ptr);
  c.stats.bytes_in_use -= size;
  c.stats.bytes_cached += size;
}

AllocStats alloc_stats() {
  DeviceCache& c = device_cache();
  std::lock_guard<std::mutex> lock(c.mu);
  return c.stats;
}

void release_cached_memory() {
  if (!available()) return;
  CUDA_CHECK(cudaStreamSynchronize(stream()));
  DeviceCache& c = device_cache();
  std::lock_guard<std::mutex> lock(c.mu);
  for (auto& [size, blocks] : c.free_blocks)
    for (void* p : blocks) CUDA_CHECK(cudaFree(p));
  c.free_blocks.clear();
  c.stats.bytes_cached = 0;
}

// --- copies: on the stream; a copy with the host waits for it to finish ----------------------------------

void copy_to_device(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream()));
  CUDA_CHECK(cudaStreamSynchronize(stream()));
}

void copy_to_host(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream()));
  CUDA_CHECK(cudaStreamSynchronize(stream()));
}

void copy_on_device(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream()));
}

}  // namespace engine::cuda
