// Loader: worker threads decode and augment batches of a Dataset into a fixed pool of batch buffers, at
// most queue_depth batches ahead of the consumer, while the model trains on the previous ones.
//
//   data::Loader loader(*ds, 128, /*train=*/true, seed, threads);
//   for (int epoch = 0; epoch < epochs; epoch++) {
//     loader.start_epoch(epoch);
//     while (const data::Batch* b = loader.next()) train_step(b->images, b->labels, b->n);
//   }
//
// Train: the order is a shuffle drawn from (seed, epoch) and the last partial batch is dropped. Eval: the
// dataset order, the last partial batch kept. Each image's augmentation is drawn from image_seed(seed,
// epoch, index), so the batches are the same for any number of threads.
//
// Data-parallel training: with Shard{r, N} batch k is the r-th of N equal slices of the global batch k
// (batch_size / N images each). The global batches, their order and their augmentation depend on the seed
// alone, so N processes see together what one process sees, and a run may resume with another N.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#include "datasets/dataset.h"
#include "engine/tensor.h"

namespace data {

struct Shard {
  int index = 0, count = 1;  // this process's slice of each batch, of `count`
};

class Loader {
 public:
  // ds must outlive the loader. The pool holds max(queue_depth, threads) + 1 batch buffers, of
  // batch_size / shard.count images each; batch_size must be a multiple of shard.count.
  Loader(const Dataset& ds, int batch_size, bool train, uint64_t seed, int threads, int queue_depth = 4,
         Shard shard = {});
  ~Loader();  // stops and joins the workers, also mid-epoch
  Loader(const Loader&) = delete;
  Loader& operator=(const Loader&) = delete;

  // Starts (or restarts) an epoch; a batch returned before is no longer valid.
  void start_epoch(int epoch);
  // The next batch of the epoch, valid until the next call; nullptr at the end of the epoch. A batch whose
  // images were all skipped is passed over; with more than one shard it is returned empty (n == 0), so
  // that every process sees the same number of batches. At the end of an epoch that skipped bad images it prints their
  // count, or throws when no image was left. Rethrows on this thread the error of a worker (a bad image in
  // fail mode, naming the file), then at every call until the next start_epoch.
  const Batch* next();
  size_t batches_per_epoch() const { return batches_; }
  size_t skipped() const { return skipped_; }  // bad images skipped so far this epoch

 private:
  enum class State { free, filling, ready };
  struct Slot {
    Batch batch;
    State state = State::free;
    size_t index = 0;  // batch number in the epoch
  };

  void stop_workers();
  void end_epoch();
  void work();
  void fill(Batch& b, size_t k);

  const Dataset& ds_;
  const int batch_size_;
  const bool train_;
  const uint64_t seed_;
  const int threads_;
  const Shard shard_;
  size_t batches_;
  int epoch_ = 0;
  bool started_ = false;
  std::vector<uint32_t> order_;  // dataset index of each position in the epoch
  std::vector<Slot> slots_;

  std::mutex mutex_;
  std::condition_variable free_cv_, ready_cv_;
  size_t next_fill_ = 0, next_take_ = 0;
  int held_ = -1;  // slot the consumer holds
  std::exception_ptr error_;
  std::atomic<bool> stop_{false};
  std::atomic<size_t> skipped_{0};
  size_t delivered_ = 0;  // images handed out this epoch
  bool ended_ = false;    // end_epoch has run
  std::vector<std::thread> workers_;
};

// A batch as x [n, c, h, w] f32 and labels [n] i32 on `device` (an explicit host-to-device copy).
void to_tensors(const Batch& b, engine::Device device, engine::Tensor& x, engine::Tensor& y);

}  // namespace data
