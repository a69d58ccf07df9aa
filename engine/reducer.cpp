#include "engine/reducer.h"

#include <algorithm>
#include <chrono>

#include "engine/cuda/cuda_backend.h"
#include "engine/cuda/nccl.h"
#include "engine/dist.h"

namespace engine {

static double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

GradReducer::GradReducer(const std::vector<Tensor>& params, const std::vector<Tensor>& stats, size_t bucket_bytes)
    : stats_(stats) {
  ENGINE_CHECK(bucket_bytes >= sizeof(float), "bucket size " + std::to_string(bucket_bytes) + " bytes: at least 4");
  const size_t cap = bucket_bytes / sizeof(float);
  if (!params.empty() && params[0].defined()) device_ = params[0].device();
  for (auto it = params.rbegin(); it != params.rend(); ++it) {
    const Tensor& p = *it;
    ENGINE_CHECK(p.defined() && p.dtype() == DType::f32 && p.device() == device_ && p.is_leaf(),
                 std::string("the gradient all-reduce takes f32 leaves, all on one device (") + device_name(device_) +
                     "), got " + (p.defined() ? p.str() : "undefined"));
    const size_t n = size_t(p.numel());
    if (buckets_.empty() || (buckets_.back().size > 0 && buckets_.back().size + n > cap)) buckets_.emplace_back();
    Bucket& b = buckets_.back();
    slots_.push_back({p.impl(), p, buckets_.size() - 1, b.size});
    b.size += n;
    b.params++;
  }
  std::sort(slots_.begin(), slots_.end(), [](const Slot& a, const Slot& b) { return a.leaf < b.leaf; });
  for (size_t i = 1; i < slots_.size(); i++)
    ENGINE_CHECK(slots_[i].leaf != slots_[i - 1].leaf, "a parameter appears twice in the gradient all-reduce");
  for (const Tensor& s : stats_) {
    ENGINE_CHECK(s.dtype() == DType::f32 && s.device() == device_,
                 std::string("running statistics on the parameters' device (") + device_name(device_) + "), got " + s.str());
    stats_size_ += size_t(s.numel());
  }
  if (device_ == Device::cuda) {
    ENGINE_CHECK(cuda::nccl_built(), "the gradient all-reduce of CUDA tensors needs NCCL, which this build lacks "
                                     "(make CUDA=1 MPI=1 with nccl.h found)");
    cuda::nccl_init();
    cuda::nccl_reserve_slots(buckets_.size() + 1);
  }
  for (Bucket& b : buckets_) b.data = Tensor::empty(Shape{int64_t(b.size)}, DType::f32, device_);
  if (stats_size_ > 0) stats_data_ = Tensor::empty(Shape{int64_t(stats_size_)}, DType::f32, device_);
  dist::reserve_slots(buckets_.size() + 1);  // the last slot: the statistics
}

void GradReducer::start(size_t slot, float* data, size_t n) {
  if (device_ == Device::cuda) cuda::nccl_start_allreduce(slot, data, n);
  else dist::start_allreduce(slot, data, n);
}

void GradReducer::wait(size_t slot) {
  if (device_ == Device::cuda) cuda::nccl_wait(slot);
  else dist::wait(slot);
}

void GradReducer::copy_into(float* dst, const float* src, size_t bytes) {
  copy_bytes(device_, dst, src, bytes);
}

void GradReducer::scale_into(float* dst, const float* src, size_t n, float scale) {
  if (device_ == Device::cuda) cuda::scale_on_device(dst, src, n, scale);
  else for (size_t i = 0; i < n; i++) dst[i] = src[i] * scale;
}

void GradReducer::begin() {
  for (Bucket& b : buckets_) b.arrived = 0, b.started = false;
  next_start_ = 0;
  t_first_ = 0;
  if (stats_size_ == 0) return;
  float* d = stats_data_.f32();
  for (const Tensor& s : stats_) {
    copy_into(d, s.f32(), s.nbytes());
    d += s.numel();
  }
  start(buckets_.size(), stats_data_.f32(), stats_size_);
}

// A gradient into its bucket's place; an undefined one (no path from the loss) as zeros. On CUDA, queued on
// the compute stream after the kernels that made the gradient.
void GradReducer::copy_in(const Slot& s) {
  float* dst = buckets_[s.bucket].data.f32() + s.offset;
  const Tensor g = s.param.grad();
  const size_t n = size_t(s.param.numel());
  if (g.defined()) copy_into(dst, g.f32(), g.nbytes());
  else if (device_ == Device::cuda) cuda::zero_on_device(dst, n);
  else std::fill(dst, dst + n, 0.f);
}

void GradReducer::start_ready_buckets() {
  while (next_start_ < buckets_.size() && buckets_[next_start_].arrived == buckets_[next_start_].params) {
    Bucket& b = buckets_[next_start_];
    if (t_first_ == 0) t_first_ = now();
    start(next_start_, b.data.f32(), b.size);
    b.started = true;
    next_start_++;
  }
  // MPI moves a non-blocking collective on only inside MPI calls: test the started ones while the
  // backward runs, so that they progress in its gaps. (NCCL's run on the GPU by themselves.)
  if (device_ == Device::cpu)
    for (size_t i = 0; i < next_start_; i++) dist::test(i);
}

void GradReducer::ready(const TensorImpl* leaf) {
  auto it = std::lower_bound(slots_.begin(), slots_.end(), leaf, [](const Slot& s, const TensorImpl* l) { return s.leaf < l; });
  if (it == slots_.end() || it->leaf != leaf) return;  // not one of ours (e.g. an input that requires grad)
  copy_in(*it);
  buckets_[it->bucket].arrived++;
  start_ready_buckets();
}

void GradReducer::finish() {
  // Parameters the backward did not reach count as arrived, with zero gradients.
  for (const Slot& s : slots_) {
    Bucket& b = buckets_[s.bucket];
    if (b.started || b.arrived == b.params) continue;
    // Arrivals are counted, not listed: recopy the whole bucket (each gradient is final by now).
    for (const Slot& t : slots_)
      if (t.bucket == s.bucket) copy_in(t);
    b.arrived = b.params;
  }
  start_ready_buckets();
  const double t_wait = now();
  const float scale = 1.f / float(dist::size());
  for (size_t i = 0; i < buckets_.size(); i++) wait(i);
  if (stats_size_ > 0) wait(buckets_.size());
  const double t_end = now();
  wait_seconds_ = t_end - t_wait;
  comm_seconds_ = t_end - (t_first_ > 0 ? t_first_ : t_wait);
  for (const Slot& s : slots_) {
    const Tensor g = s.param.grad();
    if (!g.defined()) continue;  // no rank reached it (the same graph on every rank): SGD skips it
    scale_into(g.f32(), buckets_[s.bucket].data.f32() + s.offset, size_t(g.numel()), scale);
  }
  if (stats_size_ == 0) return;
  const float* d = stats_data_.f32();
  for (const Tensor& s : stats_) {
    scale_into(s.f32(), d, size_t(s.numel()), scale);
    d += s.numel();
  }
}

}  // namespace engine
