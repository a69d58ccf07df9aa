// Gradient averaging for data-parallel training, as torch DDP's reducer: the parameters' gradients are
// packed into buckets of at most bucket_bytes, in reverse parameter order (the order the backward
// produces them). The backward reports each gradient as it becomes final (engine::run_backward's hook);
// a bucket whose gradients are all in starts its non-blocking all-reduce at once, so communication
// overlaps the rest of the backward. Buckets start in index order on every rank (MPI's collectives must
// match): a bucket that fills early waits for the ones before it. finish() starts what is left, waits for
// all, and writes sum / N back into the gradients.
//
// The BN running statistics (buffers named *.running_mean, *.running_var) ride along in one more
// all-reduce, started when the backward starts (the forward has updated them) and averaged too: every rank
// then holds the same running statistics after every step, which OABN's bound, evaluation and the
// checkpoints read (docs/distributed.md).
//
// Buckets and slots are allocated once, in the constructor; a step allocates nothing.
//
// On the CPU the all-reduces are MPI's (engine/dist.h). On CUDA (every parameter on the GPU) they are
// NCCL's (engine/cuda/nccl.h): the buckets are device buffers, the gradients are copied in on the compute
// stream as they are reported, and a full bucket's ncclAllReduce runs on a communication stream that waits
// for those copies (an event), so it overlaps the backward's later kernels; finish() makes the compute stream
// wait for every all-reduce (and blocks the host until they are done), then writes sum / N back with a
// kernel. The layout, the readiness counting and the start order are the same code on both.
#pragma once
#include <string>
#include <vector>

#include "engine/tensor.h"

namespace engine {

class GradReducer {
 public:
  // params in the model's order, each an f32 leaf, all on the CPU or all on CUDA (then nccl_init() is called
  // here: every rank must construct its reducer at the same point); stats: the running statistics to
  // average, on the parameters' device.
  GradReducer(const std::vector<Tensor>& params, const std::vector<Tensor>& stats, size_t bucket_bytes);

  void begin();                        // before the backward: starts the statistics' all-reduce
  void ready(const TensorImpl* leaf);  // leaf's gradient is final (the backward's hook)
  void finish();                       // after the backward: all gradients averaged, statistics too

  size_t buckets() const { return buckets_.size(); }
  // Of the last step: seconds from the first bucket's start to the end of finish(), and seconds that
  // finish() waited (the part of the communication not hidden behind the backward).
  double comm_seconds() const { return comm_seconds_; }
  double wait_seconds() const { return wait_seconds_; }

 private:
  struct Slot {  // a parameter's place in a bucket
    const TensorImpl* leaf;
    Tensor param;
    size_t bucket, offset;
  };
  struct Bucket {
    Tensor data;  // [size] f32 on the parameters' device
    size_t size = 0, params = 0, arrived = 0;
    bool started = false;
  };
  void start_ready_buckets();
  void copy_in(const Slot& s);
  // Through MPI (CPU) or NCCL (CUDA): slot i < buckets() is bucket i's, slot buckets() the statistics'.
  void start(size_t slot, float* data, size_t n);
  void wait(size_t slot);
  void copy_into(float* dst, const float* src, size_t bytes);  // on the reducer's device
  void scale_into(float* dst, const float* src, size_t n, float scale);

  Device device_ = Device::cpu;

  std::vector<Slot> slots_;  // sorted by leaf, for ready()
  std::vector<Bucket> buckets_;
  std::vector<Tensor> stats_;
  Tensor stats_data_;  // undefined when there are no statistics
  size_t stats_size_ = 0;
  size_t next_start_ = 0;
  double t_first_ = 0, comm_seconds_ = 0, wait_seconds_ = 0;
};

}  // namespace engine
