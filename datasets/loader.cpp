#include "datasets/loader.h"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <stdexcept>

#include "datasets/rng.h"

namespace data {

Loader::Loader(const Dataset& ds, int batch_size, bool train, uint64_t seed, int threads, int queue_depth, Shard shard)
    : ds_(ds), batch_size_(batch_size), train_(train), seed_(seed), threads_(std::max(threads, 1)), shard_(shard) {
  if (batch_size <= 0) throw std::invalid_argument("Loader: batch_size must be positive");
  if (shard.count < 1 || shard.index < 0 || shard.index >= shard.count)
    throw std::invalid_argument("Loader: shard " + std::to_string(shard.index) + " of " + std::to_string(shard.count));
  if (batch_size % shard.count != 0)
    throw std::invalid_argument("the batch size " + std::to_string(batch_size) + " does not split into " +
                                std::to_string(shard.count) + " equal shards (one per process)");
  if (ds.size() > UINT32_MAX) throw std::invalid_argument("Loader: more than 2^32 images");
  slots_.resize(size_t(std::max(queue_depth, threads_)) + 1);
  // A batch holds at most the data set's images; the buffers must fit in memory (a --batch-size of 10^8 was a
  // bare std::bad_alloc).
  const size_t images = std::min(size_t(batch_size / shard.count), std::max<size_t>(ds.size(), 1));
  const double bytes = double(slots_.size()) * double(images) * (3.0 * ds.height() * ds.width() + 1) * 4.0;
  const double memory = double(sysconf(_SC_PHYS_PAGES)) * double(sysconf(_SC_PAGE_SIZE));
  if (memory > 0 && bytes > memory / 2)
    throw std::runtime_error(fmt::format("batch size {}: the loader's {} batch buffers of {} images of 3x{}x{} need {:.1f} GB, "
                                         "more than half of this machine's {:.1f} GB", batch_size, slots_.size(), images,
                                         ds.height(), ds.width(), bytes / 1e9, memory / 1e9));
  for (auto& s : slots_) {
    Batch& b = s.batch;
    b.c = 3;
    b.h = ds.height();
    b.w = ds.width();
    b.images.resize(images * b.c * b.h * b.w);
    b.labels.resize(images);
  }
  order_.resize(ds.size());
  size_t n = ds.size();
  batches_ = train ? n / batch_size : (n + batch_size - 1) / batch_size;
}

Loader::~Loader() { stop_workers(); }

void Loader::stop_workers() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  free_cv_.notify_all();
  ready_cv_.notify_all();
  for (auto& t : workers_) t.join();
  workers_.clear();
  stop_ = false;
}

void Loader::start_epoch(int epoch) {
  stop_workers();
  epoch_ = epoch;
  size_t n = ds_.size();
  std::iota(order_.begin(), order_.end(), 0u);
  if (train_) {  // Fisher-Yates
    Rng rng(mix_seed(seed_, uint64_t(epoch)));
    for (size_t i = n; i > 1; i--) std::swap(order_[i - 1], order_[rng.below(i)]);
  }
  for (auto& s : slots_) s.state = State::free;
  next_fill_ = next_take_ = 0;
  held_ = -1;
  error_ = nullptr;
  skipped_ = 0;
  delivered_ = 0;
  ended_ = false;
  started_ = true;
  for (int t = 0; t < threads_; t++) workers_.emplace_back(&Loader::work, this);
}

const Batch* Loader::next() {
  if (!started_) throw std::logic_error("Loader::next called before start_epoch");
  std::unique_lock<std::mutex> lock(mutex_);
  auto ready = [&] {
    for (size_t s = 0; s < slots_.size(); s++)
      if (slots_[s].state == State::ready && slots_[s].index == next_take_) return int(s);
    return -1;
  };
  for (;;) {
    if (held_ >= 0) {
      slots_[held_].state = State::free;
      held_ = -1;
      free_cv_.notify_one();
    }
    if (error_) std::rethrow_exception(error_);
    if (next_take_ >= batches_) {
      end_epoch();
      return nullptr;
    }
    ready_cv_.wait(lock, [&] { return error_ || ready() >= 0; });
    if (error_) std::rethrow_exception(error_);
    held_ = ready();
    next_take_++;
    delivered_ += size_t(slots_[held_].batch.n);
    // A batch whose images were all skipped: the next, unless other processes take the same batches
    // (they must all step or all not: the caller decides, together).
    if (slots_[held_].batch.n > 0 || shard_.count > 1) return &slots_[held_].batch;
  }
}

// At the end of an epoch, once: the count of bad images skipped; an error (kept, as a worker's) when the
// epoch had images but every one was skipped.
void Loader::end_epoch() {
  if (ended_) return;
  ended_ = true;
  if (skipped_ == 0) return;
  if (delivered_ == 0) {
    error_ = std::make_exception_ptr(std::runtime_error(
        ds_.source() + ": all " + std::to_string(skipped_) + " images of the epoch were bad and skipped (--bad-images skip)"));
    std::rethrow_exception(error_);
  }
  std::fprintf(stderr, "%s: %zu bad images skipped this epoch\n", ds_.source().c_str(), size_t(skipped_));
}

// Takes the next batch number and a free slot, fills it, repeats; exits at the end of the epoch, on stop,
// or after an error (kept for next() to rethrow).
void Loader::work() {
  for (;;) {
    Slot* slot = nullptr;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      auto free_slot = [&]() -> Slot* {
        for (auto& s : slots_)
          if (s.state == State::free) return &s;
        return nullptr;
      };
      free_cv_.wait(lock, [&] { return stop_ || next_fill_ >= batches_ || free_slot(); });
      if (stop_ || next_fill_ >= batches_) return;
      slot = free_slot();
      slot->state = State::filling;
      slot->index = next_fill_++;
    }
    try {
      fill(slot->batch, slot->index);
    } catch (...) {
      {
        std::lock_guard<std::mutex> lock(mutex_);
        if (!error_) error_ = std::current_exception();
        stop_ = true;
      }
      free_cv_.notify_all();
      ready_cv_.notify_all();
      return;
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      slot->state = State::ready;
    }
    ready_cv_.notify_all();
  }
}

// Batch k: this shard's slice of positions k * batch_size .. of the epoch order; bad images skipped leave
// b.n smaller.
void Loader::fill(Batch& b, size_t k) {
  const size_t image = size_t(b.c) * b.h * b.w;
  const size_t per = size_t(batch_size_ / shard_.count), first = k * batch_size_ + shard_.index * per;
  const size_t begin = std::min(first, order_.size()), end = std::min(first + per, order_.size());
  int n = 0;
  for (size_t p = begin; p < end && !stop_; p++) {
    uint32_t i = order_[p];
    if (ds_.load(i, train_, image_seed(seed_, epoch_, i), &b.images[n * image])) {
      b.labels[n] = ds_.label(i);
      n++;
    } else {
      skipped_++;
    }
  }
  b.n = n;
}

void to_tensors(const Batch& b, engine::Device device, engine::Tensor& x, engine::Tensor& y) {
  engine::Tensor hx = engine::Tensor::empty({b.n, b.c, b.h, b.w});
  engine::Tensor hy = engine::Tensor::empty({b.n}, engine::DType::i32);
  std::memcpy(hx.raw(), b.images.data(), hx.nbytes());
  std::memcpy(hy.raw(), b.labels.data(), hy.nbytes());
  x = hx.to(device);
  y = hy.to(device);
}

}  // namespace data
