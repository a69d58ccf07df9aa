#include "engine/reducer.h"

#include <algorithm>
#include <chrono>
#include <cstring>

#include "engine/dist.h"

namespace engine {

static double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

GradReducer::GradReducer(const std::vector<Tensor>& params, const std::vector<Tensor>& stats, size_t bucket_bytes)
    : stats_(stats) {
  ENGINE_CHECK(bucket_bytes >= sizeof(float), "bucket size " + std::to_string(bucket_bytes) + " bytes: at least 4");
  const size_t cap = bucket_bytes / sizeof(float);
  for (auto it = params.rbegin(); it != params.rend(); ++it) {
    const Tensor& p = *it;
    ENGINE_CHECK(p.defined() && p.dtype() == DType::f32 && p.device() == Device::cpu && p.is_leaf(),
                 "the gradient all-reduce takes CPU f32 leaves, got " + (p.defined() ? p.str() : "undefined"));
    const size_t n = size_t(p.numel());
    if (buckets_.empty() || (buckets_.back().data.size() > 0 && buckets_.back().data.size() + n > cap))
      buckets_.emplace_back();
    Bucket& b = buckets_.back();
    slots_.push_back({p.impl(), p, buckets_.size() - 1, b.data.size()});
    b.data.resize(b.data.size() + n);
    b.params++;
  }
  std::sort(slots_.begin(), slots_.end(), [](const Slot& a, const Slot& b) { return a.leaf < b.leaf; });
  for (size_t i = 1; i < slots_.size(); i++)
    ENGINE_CHECK(slots_[i].leaf != slots_[i - 1].leaf, "a parameter appears twice in the gradient all-reduce");
  size_t n = 0;
  for (const Tensor& s : stats_) {
    ENGINE_CHECK(s.dtype() == DType::f32 && s.device() == Device::cpu, "running statistics on the CPU, got " + s.str());
    n += size_t(s.numel());
  }
  stats_data_.resize(n);
  dist::reserve_slots(buckets_.size() + 1);  // the last slot: the statistics
}

void GradReducer::begin() {
  for (Bucket& b : buckets_) b.arrived = 0, b.started = false;
  next_start_ = 0;
  t_first_ = 0;
  float* d = stats_data_.data();
  for (const Tensor& s : stats_) {
    std::memcpy(d, s.f32(), s.nbytes());
    d += s.numel();
  }
  if (!stats_data_.empty()) dist::start_allreduce(buckets_.size(), stats_data_.data(), stats_data_.size());
}

// A gradient into its bucket's place; an undefined one (no path from the loss) as zeros.
void GradReducer::copy_in(const Slot& s) {
  float* dst = buckets_[s.bucket].data.data() + s.offset;
  const Tensor g = s.param.grad();
  if (g.defined()) std::memcpy(dst, g.f32(), g.nbytes());
  else std::fill(dst, dst + s.param.numel(), 0.f);
}

void GradReducer::start_ready_buckets() {
  while (next_start_ < buckets_.size() && buckets_[next_start_].arrived == buckets_[next_start_].params) {
    Bucket& b = buckets_[next_start_];
    if (t_first_ == 0) t_first_ = now();
    dist::start_allreduce(next_start_, b.data.data(), b.data.size());
    b.started = true;
    next_start_++;
  }
  // MPI moves a non-blocking collective on only inside MPI calls: test the started ones while the
  // backward runs, so that they progress in its gaps.
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
  for (size_t i = 0; i < buckets_.size(); i++) dist::wait(i);
  if (!stats_data_.empty()) dist::wait(buckets_.size());
  const double t_end = now();
  wait_seconds_ = t_end - t_wait;
  comm_seconds_ = t_end - (t_first_ > 0 ? t_first_ : t_wait);
  for (const Slot& s : slots_) {
    const Tensor g = s.param.grad();
    if (!g.defined()) continue;  // no rank reached it (the same graph on every rank): SGD skips it
    const float* src = buckets_[s.bucket].data.data() + s.offset;
    float* dst = g.f32();
    for (int64_t i = 0; i < g.numel(); i++) dst[i] = src[i] * scale;
  }
  const float* d = stats_data_.data();
  for (const Tensor& s : stats_) {
    float* dst = s.f32();
    for (int64_t i = 0; i < s.numel(); i++) dst[i] = d[i] * scale;
    d += s.numel();
  }
}

}  // namespace engine
