#include "trainer/tensorboard_log.h"

#include <numeric>

namespace train {

void TensorBoardLog::step(int64_t step, double loss, double top1, double lr) {
  writer_.scalar("train/loss", step, float(loss));
  writer_.scalar("train/top1", step, float(top1));
  writer_.scalar("train/lr", step, float(lr));
}

void TensorBoardLog::epoch(int epoch, double train_loss, double train_top1, const EvalResult* val, bool top5,
                           double images_per_s) {
  writer_.scalar("epoch/train_loss", epoch, float(train_loss));
  writer_.scalar("epoch/train_top1", epoch, float(train_top1));
  if (val) {
    writer_.scalar("epoch/val_loss", epoch, float(val->loss));
    writer_.scalar("epoch/val_top1", epoch, float(val->top1));
    if (top5) writer_.scalar("epoch/val_top5", epoch, float(val->top5));
  }
  writer_.scalar("epoch/images_per_s", epoch, float(images_per_s));
}

void TensorBoardLog::quantizer_steps(int epoch, const models::Model& model) {
  const std::string suffix = ".step";
  for (const layers::Param& p : model.parameters()) {
    if (p.kind != layers::ParamKind::step) continue;
    const std::vector<float> s = p.tensor.to_vector();
    const std::string name = p.name.substr(0, p.name.size() - suffix.size());  // "stage1.0.weight_quant"
    writer_.scalar("step/" + name, epoch, float(std::accumulate(s.begin(), s.end(), 0.0) / double(s.size())));
  }
}

}  // namespace train
