#include "trainer/options.h"

#include <fmt/format.h>
#include <omp.h>

#include <charconv>
#include <cmath>
#include <functional>
#include <map>
#include <stdexcept>

namespace train {

namespace {

template <class T>
T number(const std::string& name, const std::string& value) {
  T v{};
  auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), v);
  if (ec != std::errc() || end != value.data() + value.size())
    throw std::runtime_error(fmt::format("option {}: '{}' is not a valid number", name, value));
  return v;
}

template <class T>
T positive(const std::string& name, const std::string& value) {
  T v = number<T>(name, value);
  if (!(v > 0)) throw std::runtime_error(fmt::format("option {}: must be positive, got {}", name, value));
  return v;
}

// The range depends on --qat, which may come later: check_bit_widths checks it after parsing.
int bit_width(const std::string& name, const std::string& value) { return number<int>(name, value); }

}  // namespace

int thread_count(const std::string& name, const std::string& value) {
  const int n = positive<int>(name, value);
  const int most = 4 * std::max(1, omp_get_num_procs());
  if (n > most)
    throw std::runtime_error(fmt::format("option {}: {} threads is more than 4 for each of this machine's {} cores (each "
                                         "loader thread holds a batch buffer)", name, n, most / 4));
  return n;
}

namespace {

// --bits and --act-bits 2..16; with --qat cluster --bits 1..8 (a codebook of 2^B entries) and --act-bits 1..16.
void check_bit_widths(const Options& o) {
  const bool cluster = o.qat && models::qat_traits(*o.qat).cluster;
  if (cluster ? o.bits < 1 || o.bits > 8 : o.bits < 2 || o.bits > 16)
    throw std::runtime_error(fmt::format("option --bits: {} is outside {}", o.bits, cluster ? "1..8 for --qat cluster" : "2..16"));
  if (o.act_bits < (cluster ? 1 : 2) || o.act_bits > 16)
    throw std::runtime_error(fmt::format("option --act-bits: {} is outside {}", o.act_bits, cluster ? "1..16 for --qat cluster" : "2..16"));
  if (cluster && o.granularity != "layer")
    throw std::runtime_error("option --granularity: --qat cluster has one codebook per layer (channel is for the uniform methods)");
}

std::string one_of(const std::string& name, const std::string& value, std::initializer_list<const char*> allowed) {
  std::string list;
  for (const char* a : allowed) {
    if (value == a) return value;
    list += (list.empty() ? "" : ", ") + std::string(a);
  }
  throw std::runtime_error(fmt::format("option {}: '{}' is not one of {}", name, value, list));
}

struct Spec {
  const char* name;
  const char* arg;  // nullptr: a flag
  const char* help;
  std::function<void(Options&, const std::string&)> set;
};

const std::vector<Spec>& specs() {
  static const std::vector<Spec> s = {
      {"--arch", "NAME", "model: repvgg-cifar (cifar10 default), repvgg-a0 (imagenet default), repvgg-a1 … repvgg-b3g4, qarepvgg-*, acb-* (ACNet blocks), orepa-* (OREPA blocks), resnet18[-cifar][-wN] and its acb- / orepa- forms (torchvision ResNet-18)",
       [](Options& o, const std::string& v) { o.arch = v; }},
      {"--data", "DIR", "dataset folder (default: data/ or ../shared/data; CIFAR-10 is downloaded when missing)",
       [](Options& o, const std::string& v) { o.data = v; }},
      {"--epochs", "N", "epochs (default 450 cifar10; imagenet 120, or 160 when --oabn-k < 5)",
       [](Options& o, const std::string& v) { o.epochs = positive<int>("--epochs", v); }},
      {"--batch-size", "N", "batch size (default 128 cifar10, 256 imagenet)",
       [](Options& o, const std::string& v) { o.batch_size = positive<int>("--batch-size", v); }},
      {"--lr", "X", "base learning rate (default 0.1)", [](Options& o, const std::string& v) { o.lr = positive<float>("--lr", v); }},
      {"--momentum", "X", "SGD momentum (default 0.9)", [](Options& o, const std::string& v) { o.momentum = number<float>("--momentum", v); }},
      {"--nesterov", nullptr, "Nesterov momentum", [](Options& o, const std::string&) { o.nesterov = true; }},
      {"--wd", "X", "weight decay (default 1e-4)", [](Options& o, const std::string& v) { o.wd = number<float>("--wd", v); }},
      {"--sched", "cosine|step", "learning-rate schedule, stepped per epoch (default cosine cifar10, step imagenet)",
       [](Options& o, const std::string& v) { o.sched = one_of("--sched", v, {"cosine", "step"}); }},
      {"--tmax", "N", "cosine period T_max in epochs (default 50 cifar10, else --epochs)",
       [](Options& o, const std::string& v) { o.tmax = positive<int>("--tmax", v); }},
      {"--step-size", "N", "step decay every N epochs (default 30; 40 when --oabn-k < 5)",
       [](Options& o, const std::string& v) { o.step_size = positive<int>("--step-size", v); }},
      {"--gamma", "X", "step decay factor (default 0.1)", [](Options& o, const std::string& v) { o.gamma = positive<float>("--gamma", v); }},
      {"--warmup", "N", "linear warm-up epochs (default 0)", [](Options& o, const std::string& v) { o.warmup = number<int>("--warmup", v); }},
      {"--label-smoothing", "X", "label smoothing (default 0)",
       [](Options& o, const std::string& v) {
         o.label_smoothing = number<float>("--label-smoothing", v);
         if (!(o.label_smoothing >= 0 && o.label_smoothing <= 1))
           throw std::runtime_error(fmt::format("option --label-smoothing: must be in [0, 1], got {}", v));
       }},
      {"--oabn-k", "K", "outlier-aware BN: clip identity-branch gamma to [-K var, K var] (default off)",
       [](Options& o, const std::string& v) { o.oabn_k = positive<float>("--oabn-k", v); }},
      {"--custom-l2", nullptr, "RepVGG's custom L2 on the merged kernel instead of plain decay on the branches",
       [](Options& o, const std::string&) { o.custom_l2 = true; }},
      {"--seed", "N", "random seed (default 0)", [](Options& o, const std::string& v) { o.seed = number<uint64_t>("--seed", v); }},
      {"--threads", "N", "threads (default: all cores)", [](Options& o, const std::string& v) { o.threads = thread_count("--threads", v); }},
      {"--device", "cpu|cuda", "device (default cpu)", [](Options& o, const std::string& v) { o.device = one_of("--device", v, {"cpu", "cuda"}); }},
      {"--bucket-mb", "X", "under mpirun: gradients are all-reduced in buckets of at most X MB (default 25, as torch DDP)",
       [](Options& o, const std::string& v) { o.bucket_mb = positive<float>("--bucket-mb", v); }},
      {"--sync-bn", nullptr, "under mpirun: BN normalizes with the global batch's statistics (all-reduced; CPU only), "
                             "not each process's shard's",
       [](Options& o, const std::string&) { o.sync_bn = true; }},
      {"--dist-timeout", "S", "under mpirun: a rank that waits S seconds for the others in a collective (one hung "
                              "or stopped) ends the job with a message (default 1800, as torch DDP)",
       [](Options& o, const std::string& v) { o.dist_timeout = positive<float>("--dist-timeout", v); }},
      {"--out", "DIR", "run folder (default runs/<dataset>-<arch>-<date-time>)", [](Options& o, const std::string& v) { o.out = v; }},
      {"--resume", "PATH", "continue a run: its folder or a checkpoint file", [](Options& o, const std::string& v) { o.resume = v; }},
      {"--limit-train", "N", "use N training images spread evenly over the set (default all)",
       [](Options& o, const std::string& v) { o.limit_train = positive<size_t>("--limit-train", v); }},
      {"--limit-val", "N", "use N validation images spread evenly over the set (default all)",
       [](Options& o, const std::string& v) { o.limit_val = positive<size_t>("--limit-val", v); }},
      {"--eval-every", "N", "evaluate every N epochs and at the last (default 1)",
       [](Options& o, const std::string& v) { o.eval_every = positive<int>("--eval-every", v); }},
      {"--synsets", "FILE", "imagenet: number classes by this synset list (LOC_synset_mapping.txt)",
       [](Options& o, const std::string& v) { o.synsets = v; }},
      {"--image-size", "N", "imagenet: crop size (default 224)", [](Options& o, const std::string& v) { o.image_size = positive<int>("--image-size", v); }},
      {"--resize-size", "N", "imagenet: eval resize of the shorter side (default 256)",
       [](Options& o, const std::string& v) { o.resize_size = positive<int>("--resize-size", v); }},
      {"--bad-images", "fail|skip", "imagenet: on a bad image (undecodable, over --max-image-pixels, too elongated to resize), fail (default) or skip it, counted each epoch",
       [](Options& o, const std::string& v) { o.bad_images = one_of("--bad-images", v, {"fail", "skip"}); }},
      {"--max-image-pixels", "N", "imagenet: an image of more pixels (width x height) is a bad image (default 67108864, 64 megapixels)",
       [](Options& o, const std::string& v) { o.max_image_pixels = positive<int64_t>("--max-image-pixels", v); }},
      {"--qat", "METHOD", "quantization-aware training: repq-bn, repq-bnest, merged (deploy form first), bnest "
                          "(full precision, BN statistics estimated; no quantizers), or cluster (ClusterQAT: a k-means "
                          "codebook of 2^B weights per layer, codebooks reset each epoch)",
       [](Options& o, const std::string& v) {
         o.qat = models::parse_qat_method(v);
         if (!o.qat)
           throw std::runtime_error(fmt::format("option --qat: '{}' is not one of {}", v, models::kQatMethodNames));
       }},
      {"--bits", "B", "--qat: weight bits, 2..16 (cluster: 1..8; default 8)", [](Options& o, const std::string& v) { o.bits = bit_width("--bits", v); }},
      {"--act-bits", "B", "--qat: activation bits, 2..16 (cluster: 1..16; default: as --bits)",
       [](Options& o, const std::string& v) { o.act_bits = bit_width("--act-bits", v); }},
      {"--granularity", "layer|channel", "--qat: one weight step per layer (default) or per output channel",
       [](Options& o, const std::string& v) { o.granularity = one_of("--granularity", v, {"layer", "channel"}); }},
      {"--step-init", "min-error|lsq", "--qat: first-batch step initialization: least quantization error "
                                       "(default) or LSQ's 2 mean|x| / sqrt(Q_P)",
       [](Options& o, const std::string& v) { o.step_init = one_of("--step-init", v, {"min-error", "lsq"}); }},
      {"--quantize-first-last", nullptr, "--qat: quantize the first layer (stage0, conv1) and the FC too (default: they stay FP32)",
       [](Options& o, const std::string&) { o.quantize_first_last = true; }},
      {"--layer-bits", "SPEC", "--qat: per layer NAME=B or NAME=fp32, comma-separated, * and ? in names, later entries win "
                               "(e.g. stage0=8,stage2.*=fp32); B sets the weight (cluster: codebook) and input bits",
       [](Options& o, const std::string& v) { o.layer_bits = v; }},
      {"--init", "CKPT", "start from this trained checkpoint's weights (e.g. runs/X/best.safetensors); "
                         "--resume continues a run instead",
       [](Options& o, const std::string& v) { o.init = v; }},
      {"--distill", "TEACHER", "distill from this full-precision checkpoint of the same arch (e.g. the FP run --init "
                               "came from): the loss is (1 - w) CE + w T^2 KL(teacher || student) of the logits at "
                               "temperature T (Hinton et al. 2015)",
       [](Options& o, const std::string& v) { o.distill = v; }},
      {"--distill-t", "T", "--distill: the temperature T (default 4)",
       [](Options& o, const std::string& v) {
         o.distill_t = positive<float>("--distill-t", v);
         if (!std::isfinite(o.distill_t)) throw std::runtime_error(fmt::format("option --distill-t: {} is not a finite number", v));
       }},
      {"--distill-w", "W", "--distill: the soft-target loss's share w in [0, 1] (default 0.5)",
       [](Options& o, const std::string& v) {
         o.distill_w = number<float>("--distill-w", v);
         if (!(o.distill_w >= 0 && o.distill_w <= 1))
           throw std::runtime_error(fmt::format("option --distill-w: {} is outside [0, 1]", v));
       }},
      {"--summary", nullptr, "print the model's parameter and MAC counts and exit", [](Options& o, const std::string&) { o.summary = true; }},
      {"--help", nullptr, "this text", [](Options& o, const std::string&) { o.help = true; }},
  };
  return s;
}

// Fills what the user left unset from the dataset's defaults (OABN paper, Table 2).
void apply_defaults(Options& o) {
  bool cifar = o.dataset == "cifar10";
  bool long_schedule = o.oabn_k > 0 && o.oabn_k < 5;  // imagenet: k < 5 trains 160 epochs, steps every 40
  if (o.arch.empty()) o.arch = cifar ? "repvgg-cifar" : "repvgg-a0";
  if (o.batch_size == 0) o.batch_size = cifar ? 128 : 256;
  if (o.sched.empty()) o.sched = cifar ? "cosine" : "step";
  if (o.epochs == 0) o.epochs = cifar ? 450 : (long_schedule ? 160 : 120);
  if (o.step_size == 0) o.step_size = long_schedule ? 40 : 30;
  if (o.tmax == 0) o.tmax = cifar ? 50 : o.epochs;
  if (o.image_size == 0) o.image_size = cifar ? 32 : 224;
  if (o.act_bits == 0) o.act_bits = o.bits;
}

}  // namespace

Options parse_options(const std::vector<std::string>& args) {
  Options o;
  for (size_t i = 0; i < args.size(); i++) {
    const std::string& a = args[i];
    if (a.rfind("--", 0) != 0) {
      if (!o.dataset.empty()) throw std::runtime_error(fmt::format("unexpected argument '{}' (the dataset is '{}')", a, o.dataset));
      o.dataset = one_of("DATASET", a, {"cifar10", "imagenet"});
      continue;
    }
    std::string name = a, value;
    if (auto eq = a.find('='); eq != std::string::npos) {
      name = a.substr(0, eq);
      value = a.substr(eq + 1);
    }
    const Spec* spec = nullptr;
    for (const Spec& s : specs())
      if (name == s.name) spec = &s;
    if (!spec) throw std::runtime_error(fmt::format("unknown option '{}' (see ./train --help)", name));
    if (spec->arg && value.empty()) {
      if (i + 1 >= args.size()) throw std::runtime_error(fmt::format("option {} needs a value {}", name, spec->arg));
      value = args[++i];
    }
    spec->set(o, value);
  }
  if (o.help || (!o.resume.empty() && o.dataset.empty())) return o;  // a resumed run re-reads its options
  if (o.dataset.empty()) o.dataset = o.summary ? "imagenet" : "";
  if (o.dataset.empty()) throw std::runtime_error("no dataset given: ./train cifar10|imagenet [options] (see --help)");
  apply_defaults(o);
  check_bit_widths(o);
  if (o.distill.empty() && (o.distill_t != Options().distill_t || o.distill_w != Options().distill_w))
    throw std::runtime_error("--distill-t and --distill-w need --distill TEACHER");
  if (!o.qat && (o.quantize_first_last || o.granularity != "layer" || o.step_init != "min-error" || !o.layer_bits.empty()))
    throw std::runtime_error("--granularity, --step-init, --quantize-first-last and --layer-bits need --qat METHOD");
  return o;
}

std::string help_text() {
  std::string s =
      "usage: ./train DATASET [options]   DATASET: cifar10 | imagenet\n"
      "Trains a RepVGG-family model or a ResNet-18 and writes a run folder (config.json, log.csv, last/best.safetensors).\n\n";
  for (const Spec& sp : specs()) {
    std::string left = std::string(sp.name) + (sp.arg ? std::string(" ") + sp.arg : "");
    s += fmt::format("  {:<26} {}\n", left, sp.help);
  }
  return s;
}

}  // namespace train
