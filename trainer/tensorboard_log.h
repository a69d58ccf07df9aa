// ./train's TensorBoard scalars (interop/event_writer.h), written into the run folder beside log.csv, so
// that `tensorboard --logdir runs` shows every run. Each run or resume adds its own events file; TensorBoard
// merges the files of a folder.
//
//   per step (x = steps since the run began):  train/loss, train/top1 (both running over the epoch so
//                                              far, as the progress line), train/lr
//   per epoch (x = log.csv's epoch number):    epoch/train_loss, epoch/train_top1, epoch/val_loss,
//                                              epoch/val_top1, epoch/val_top5 (imagenet), epoch/images_per_s
//                                              (the val tags only in epochs that evaluate);
//                                              step/<quantizer> (QAT): each quantizer's step, the mean over
//                                              channels for a per-channel one, e.g. step/stage1.0.weight_quant
#pragma once
#include <string>

#include "interop/event_writer.h"
#include "models/repvgg.h"
#include "trainer/step.h"

namespace train {

class TensorBoardLog {
 public:
  explicit TensorBoardLog(const std::string& run_dir) : writer_(run_dir) {}
  void step(int64_t step, double loss, double top1, double lr);
  // `val` null where the epoch did not evaluate; top-5 only with `top5`.
  void epoch(int epoch, double train_loss, double train_top1, const EvalResult* val, bool top5, double images_per_s);
  void quantizer_steps(int epoch, const models::Model& model);

 private:
  interop::EventWriter writer_;
};

}  // namespace train
