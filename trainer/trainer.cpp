#include "trainer/trainer.h"

#include <fmt/format.h>
#include <omp.h>
#include <unistd.h>

#include <atomic>
#include <charconv>
#include <chrono>
#include <cmath>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>

#include "datasets/cifar10.h"
#include "datasets/image_folder.h"
#include "datasets/loader.h"
#include "engine/autograd.h"
#include "engine/dist.h"
#include "engine/cuda/cuda_backend.h"
#include "engine/cuda/nccl.h"
#include "engine/ops.h"
#include "engine/optim.h"
#include "engine/schedule.h"
#include "layers/checkpoint.h"
#include "models/repvgg.h"
#include "trainer/step.h"
#include "trainer/tensorboard_log.h"

namespace train {

namespace fs = std::filesystem;
using engine::Device;
using engine::Shape;
using engine::Tensor;

static std::atomic<bool> g_interrupted{false};
void request_interrupt() { g_interrupted = true; }
void install_interrupt_handler() {
  std::signal(SIGINT, [](int) { g_interrupted = true; });
  // mpirun answers Ctrl-C by killing the job, but forwards SIGUSR1 to every rank (docs/distributed.md).
  std::signal(SIGUSR1, [](int) { g_interrupted = true; });
}

// --- data ----------------------------------------------------------------------------------------------

struct Data {
  std::unique_ptr<data::Dataset> train, val;
  std::string dir;
};

static Data open_data(const Options& o) {
  Data d;
  if (o.dataset == "cifar10") {
    d.dir = data::find_or_fetch_cifar10(o.data);
    d.train = data::open_cifar10(d.dir, true, o.limit_train);
    d.val = data::open_cifar10(d.dir, false, o.limit_val);
    return d;
  }
  if (o.data.empty())
    throw std::runtime_error("imagenet needs --data DIR, a folder with train/ and val/ ImageFolder trees "
                             "(e.g. --data ../shared/data/imagenette)");
  d.dir = o.data;
  data::ImageOptions io;
  io.image_size = o.image_size;
  io.resize_size = o.resize_size;
  io.synsets = o.synsets;
  io.bad_images = o.bad_images == "skip" ? data::BadImages::skip : data::BadImages::fail;
  io.max_pixels = o.max_image_pixels;
  d.train = data::open_image_folder((fs::path(o.data) / "train").string(), io, o.limit_train);
  d.val = data::open_image_folder((fs::path(o.data) / "val").string(), io, o.limit_val);
  if (d.train->num_classes() != d.val->num_classes())
    throw std::runtime_error(fmt::format("{}: train has {} classes but val has {}", o.data, d.train->num_classes(),
                                         d.val->num_classes()));
  return d;
}

// --- the run folder --------------------------------------------------------------------------------------

static std::string now_string(const char* format) {
  std::time_t t = std::time(nullptr);
  char buf[64];
  std::strftime(buf, sizeof buf, format, std::localtime(&t));
  return buf;
}

static std::string git_commit() {
  FILE* p = popen("git rev-parse HEAD 2>/dev/null", "r");
  if (!p) return "unknown";
  char buf[64] = {};
  bool ok = std::fgets(buf, sizeof buf, p) != nullptr;
  pclose(p);
  std::string s = ok ? std::string(buf) : "unknown";
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.pop_back();
  return s.empty() ? "unknown" : s;
}

static nlohmann::json options_json(const Options& o) {
  nlohmann::json j = {{"dataset", o.dataset}, {"arch", o.arch}, {"data", o.data}, {"epochs", o.epochs},
          {"batch_size", o.batch_size}, {"lr", o.lr}, {"momentum", o.momentum}, {"nesterov", o.nesterov},
          {"wd", o.wd}, {"sched", o.sched}, {"tmax", o.tmax}, {"step_size", o.step_size}, {"gamma", o.gamma},
          {"warmup", o.warmup}, {"label_smoothing", o.label_smoothing}, {"oabn_k", o.oabn_k},
          {"custom_l2", o.custom_l2}, {"seed", o.seed}, {"threads", o.threads}, {"device", o.device}, {"bucket_mb", o.bucket_mb}, {"sync_bn", o.sync_bn},
          {"out", o.out}, {"limit_train", o.limit_train}, {"limit_val", o.limit_val}, {"eval_every", o.eval_every},
          {"synsets", o.synsets}, {"image_size", o.image_size}, {"resize_size", o.resize_size},
          {"bad_images", o.bad_images}, {"qat", o.qat ? models::qat_method_name(*o.qat) : ""}, {"bits", o.bits}, {"act_bits", o.act_bits},
          {"granularity", o.granularity}, {"step_init", o.step_init}, {"quantize_first_last", o.quantize_first_last},
          {"init", o.init}};
  if (!o.distill.empty()) j["distill"] = o.distill, j["distill_t"] = o.distill_t, j["distill_w"] = o.distill_w;
  if (!o.layer_bits.empty()) j["layer_bits"] = o.layer_bits;
  return j;
}

static models::QatConfig qat_config(const Options& o) {
  models::QatConfig c{*o.qat, o.bits, o.act_bits, o.granularity == "channel", o.quantize_first_last, layers::parse_step_init(o.step_init)};
  if (!o.layer_bits.empty()) {
    std::vector<std::string> names;
    for (const models::LayerSpec& l : models::layer_specs(models::arch_config(o.arch))) names.push_back(l.name);
    std::vector<models::LayerBits> base;
    for (size_t i = 0; i < names.size(); i++) base.push_back(c.layer(i, names.size()));
    c.layers = models::apply_layer_spec(o.layer_bits, names, base, o.act_bits);
    models::check_qat_bits(c, "option --layer-bits");
  }
  return c;
}

// --init: a trained full-precision checkpoint's weights into the new model (before set_qat), checked
// against the run's arch, classes and OABN setting first. Nothing is written before this runs.
static void load_init(const Options& o, models::Model& model) {
  if (!fs::is_regular_file(o.init)) throw std::runtime_error(fmt::format("--init {}: no such checkpoint file", o.init));
  const st::File file = st::load(o.init);
  auto meta = [&](const std::string& key) {  // quoted in messages: cut
    auto it = file.metadata.find(key);
    return it == file.metadata.end() ? std::string() : st::cut(it->second);
  };
  if (!meta("arch").empty() && meta("arch") != o.arch)
    throw std::runtime_error(fmt::format("--init {}: a {} checkpoint, but this run trains {} (give --arch {})", o.init,
                                         meta("arch"), o.arch, meta("arch")));
  // A --qat bnest run trained the full-precision model (its BN statistics estimated): its weights start the
  // RepQ paper's BNEst pipeline (FP training with BN estimation, then RepQ-BNEst), as a plain run's start any QAT.
  const std::optional<models::QatMethod> method = models::parse_qat_method(meta("qat"));
  if (!meta("qat").empty() && !(method && models::qat_traits(*method).full_precision))
    throw std::runtime_error(fmt::format("--init {}: a QAT checkpoint ({}); --init takes a full-precision one (a plain or "
                                         "a --qat bnest run's), and --resume continues a QAT run", o.init, meta("qat")));
  if (!meta("oabn_k").empty() && meta("oabn_k") != fmt::format("{}", o.oabn_k))
    throw std::runtime_error(fmt::format("--init {}: trained with --oabn-k {}, this run has {}: give --oabn-k {}", o.init,
                                         meta("oabn_k"), o.oabn_k, meta("oabn_k")));
  const bool deploy = layers::deploy_form(file);
  if (deploy && !(o.qat && models::qat_traits(*o.qat).deploy_first))
    throw std::runtime_error(fmt::format("--init {}: a deploy-form checkpoint has no branches to {}", o.init,
                                         !o.qat ? "train" : "merge (only --qat merged starts from one)"));
  if (deploy) model.switch_to_deploy();
  layers::load_state_dict(model, file, "", o.init);
  std::printf("init: weights from %s\n", o.init.c_str());
}

// --distill: the full-precision teacher, of the run's arch and classes (its own OABN k), in deploy form (its
// eval function, one conv per block) and eval mode on the run's device, frozen. Nothing is written before this runs.
static std::unique_ptr<models::Model> load_teacher(const Options& o, const models::ArchConfig& arch, Device device) {
  if (!fs::is_regular_file(o.distill)) throw std::runtime_error(fmt::format("--distill {}: no such checkpoint file", o.distill));
  const st::File file = st::load(o.distill);
  auto meta = [&](const std::string& key) {
    auto it = file.metadata.find(key);
    return it == file.metadata.end() ? std::string() : st::cut(it->second);
  };
  if (!meta("arch").empty() && meta("arch") != o.arch)
    throw std::runtime_error(fmt::format("--distill {}: a {} checkpoint, the student is {}: the teacher is the same arch in "
                                         "full precision", o.distill, meta("arch"), o.arch));
  if (!meta("qat").empty())
    throw std::runtime_error(fmt::format("--distill {}: a QAT checkpoint ({}); the teacher is a full-precision one", o.distill,
                                         meta("qat")));
  const std::string fc_weight = models::layer_specs(arch).back().name + ".weight";
  auto fc = file.tensors.find(fc_weight);
  if (fc != file.tensors.end() && (fc->second.shape.size() != 2 || fc->second.shape[0] != arch.num_classes))
    throw std::runtime_error(fmt::format("--distill {}: tensor '{}' has shape {}, the student has {} classes",
                                         o.distill, fc_weight, st::shape_str(fc->second.shape), arch.num_classes));
  const float oabn_k = meta("oabn_k").empty() ? 0.0f : (float)st::metadata_double(file.metadata, o.distill, "oabn_k", 0, HUGE_VAL);
  engine::Rng rng(0);
  auto teacher = models::make_model(arch, rng, arch.block == models::BlockType::repvgg ? oabn_k : 0.0f);
  const bool deploy = layers::deploy_form(file);
  if (deploy) teacher->switch_to_deploy();
  layers::load_state_dict(*teacher, file, "", o.distill);
  if (!deploy) teacher->switch_to_deploy();
  teacher->to(device);
  teacher->freeze();  // eval mode, its weights constants: each reordered for oneDNN once, not every step
  std::printf("distill: teacher %s, T %g, soft-target share %g\n", o.distill.c_str(), o.distill_t, o.distill_w);
  return teacher;
}

// Points runs/latest at the run folder (a relative link, replaced atomically).
static void link_latest(const fs::path& run) {
  fs::path parent = run.parent_path().empty() ? fs::path(".") : run.parent_path();
  fs::path tmp = parent / ".latest.tmp", link = parent / "latest";
  std::error_code ec;
  fs::remove(tmp, ec);
  fs::create_directory_symlink(run.filename(), tmp, ec);
  if (!ec) fs::rename(tmp, link, ec);
}

// Resolves --resume: the run folder and the checkpoint file, and the options of the original command
// line with this one's added after them (so e.g. a larger --epochs extends the run).
static Options resume_options(const Options& given, const std::vector<std::string>& argv, fs::path& ckpt) {
  fs::path p = given.resume, dir;
  if (fs::is_directory(p)) {
    dir = p;
    ckpt = p / "last.safetensors";
  } else {
    ckpt = p;
    dir = p.parent_path();
  }
  if (!fs::exists(ckpt)) throw std::runtime_error(fmt::format("--resume {}: no checkpoint {}", given.resume, ckpt.string()));
  fs::path cfg = dir / "config.json";
  if (!fs::is_regular_file(cfg)) throw std::runtime_error(fmt::format("--resume {}: {} is missing or not a regular file", given.resume, cfg.string()));
  std::ifstream in(cfg);
  if (!in) throw std::runtime_error(fmt::format("--resume {}: cannot read {}", given.resume, cfg.string()));
  nlohmann::json j;
  try {
    in >> j;
  } catch (const std::exception& e) {
    throw std::runtime_error(fmt::format("{}: not valid JSON ({})", cfg.string(), e.what()));
  }
  std::vector<std::string> args;
  try {
    args = j.at("argv").get<std::vector<std::string>>();
  } catch (const nlohmann::json::exception& e) {
    throw std::runtime_error(fmt::format("{}: expected \"argv\", the original command line as a list of strings ({})", cfg.string(), e.what()));
  }
  for (size_t i = 0; i < argv.size(); i++) {
    if (argv[i] == "--resume") i++;
    else if (argv[i].rfind("--resume=", 0) != 0 && argv[i] != given.dataset) args.push_back(argv[i]);
  }
  Options o;
  try {
    o = parse_options(args);
  } catch (const std::runtime_error& e) {
    throw std::runtime_error(fmt::format("{} (the run's command line, with this one's options after it): {}", cfg.string(), e.what()));
  }
  o.out = dir.string();
  o.resume = given.resume;
  return o;
}

// log.csv, kept whole in memory and rewritten atomically after every epoch.
struct Log {
  fs::path path;
  bool top5;
  std::vector<std::string> rows;

  std::string header() const {
    return std::string("epoch,lr,train_loss,train_top1,val_loss,val_top1") + (top5 ? ",val_top5" : "") +
           ",seconds,images_per_s";
  }
  // Keeps the rows of the first `completed` epochs of an earlier (interrupted) run.
  void load_completed(int completed) {
    if (fs::exists(path) && !fs::is_regular_file(path)) throw std::runtime_error(fmt::format("{}: not a regular file", path.string()));
    std::ifstream in(path);
    std::string line;
    std::getline(in, line);
    while (std::getline(in, line)) {
      if (line.empty()) continue;
      int epoch = 0;
      auto [end, ec] = std::from_chars(line.data(), line.data() + line.size(), epoch);
      if (ec != std::errc() || *end != ',')
        throw std::runtime_error(fmt::format("{}: row '{:.80}' does not start with an epoch number", path.string(), line));
      if (epoch <= completed) rows.push_back(line);
    }
  }
  void write() const {
    std::string s = header() + "\n";
    for (auto& r : rows) s += r + "\n";
    st::write_file_atomic(path.string(), s);
  }
};

// --- data-parallel pieces (docs/distributed.md) ------------------------------------------------------------

// Rank 0's string on every rank.
static std::string broadcast_string(std::string s) {
  uint64_t n = s.size();
  dist::broadcast(&n, sizeof n);
  s.resize(n);
  dist::broadcast(s.data(), n);
  return s;
}

// --- training --------------------------------------------------------------------------------------------

struct Progress {
  bool tty = isatty(fileno(stdout));
  std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now();

  double seconds() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  }
  void update(int epoch, int epochs, size_t done, size_t total, double loss, double acc, double images) {
    double s = seconds(), rate = images / std::max(s, 1e-9);
    double eta = total > done && done > 0 ? s / done * (total - done) : 0;
    std::string line = fmt::format("epoch {}/{}  batch {}/{}  loss {:.4f}  acc {:.2f}%  {:.1f} img/s  ETA {}:{:02d}",
                                   epoch + 1, epochs, done, total, loss, acc, rate, (int)eta / 60, (int)eta % 60);
    if (tty) {
      std::printf("\r%s\033[K", line.c_str());
      std::fflush(stdout);
    } else if (done == total || done % std::max<size_t>(total / 10, 1) == 0) {
      std::printf("%s\n", line.c_str());
      std::fflush(stdout);
    }
  }
  void end_line() {
    if (tty) std::printf("\n");
  }
};

// --- one run, in the order it happens ---------------------------------------------------------------
//   set_up_process   the device, the threads, the options that cannot go together
//   Run::Run         data, model (--init, --qat), optimizer, schedule, loaders, the run folder
//   resume / write_config, then start_distributed
//   per epoch: train_epoch (the steps), end_epoch (evaluation, log, checkpoints; save)

// The device this process trains on (one GPU per rank under mpirun), and its threads; refuses what
// cannot go together before any work.
static Device set_up_process(Options& opt) {
  const Device device = opt.device == "cuda" ? Device::cuda : Device::cpu;
  if (device == Device::cuda && opt.sync_bn)
    throw std::runtime_error("--sync-bn is not supported with --device cuda (the CUDA BN kernels do not all-reduce "
                             "their sums); drop --sync-bn (per-rank BN, running statistics averaged) or train on the CPU");
  if (dist::distributed() && device == Device::cuda) {
    if (!engine::cuda::nccl_built())
      throw std::runtime_error("--device cuda under mpirun needs the NCCL all-reduce, which this build lacks (it needs "
                               "the CUDA backend and MPI: make CUDA=1 MPI=1, with nccl.h found); train distributed on "
                               "the CPU (--device cpu)");
    // One GPU per rank, chosen before any CUDA work makes the stream and handles on GPU 0.
    engine::cuda::select_device(dist::local_rank(), dist::local_size());
  }
  if (device == Device::cuda) engine::cuda::require();
  dist::set_timeout(opt.dist_timeout);
  // Under mpirun the ranks of a machine share its cores, unless --threads says otherwise.
  if (opt.threads == 0 && dist::local_size() > 1) opt.threads = std::max(1, omp_get_num_procs() / dist::local_size());
  if (opt.threads > 0) omp_set_num_threads(opt.threads);
  return device;
}

// The arch, checked against the options that need a RepVGG block or the branches.
static models::ArchConfig checked_arch(const Options& opt) {
  models::ArchConfig arch = models::arch_config(opt.arch);  // checks the name before any work
  if (opt.oabn_k > 0 && arch.block != models::BlockType::repvgg)
    throw std::runtime_error(fmt::format("--oabn-k: {} has no identity-branch BN to clip (OABN is for RepVGG blocks)", opt.arch));
  if (opt.custom_l2 && arch.block != models::BlockType::repvgg)
    throw std::runtime_error(fmt::format("--custom-l2 is RepVGG's; {} uses plain L2", opt.arch));
  if (opt.custom_l2 && opt.qat && models::qat_traits(*opt.qat).deploy_first)
    throw std::runtime_error("--custom-l2 works on the branches, which --qat merged replaces by one conv per block");
  return arch;
}

static engine::Schedule schedule(const Options& opt) {
  engine::Schedule sched;
  sched.kind = opt.sched == "cosine" ? engine::ScheduleKind::cosine : engine::ScheduleKind::step;
  sched.base_lr = opt.lr;
  sched.t_max = opt.tmax;
  sched.step_size = opt.step_size;
  sched.gamma = opt.gamma;
  sched.warmup_epochs = opt.warmup;
  return sched;
}

// Everything a run holds, from its set-up on.
struct Run {
  Options opt;
  Device device;
  bool lead = dist::rank() == 0;  // rank 0 alone writes the run folder
  int threads = omp_get_max_threads();
  models::ArchConfig arch;
  Data d;
  engine::Rng init_rng;
  std::unique_ptr<models::Model> model_;
  models::Model& model;
  Optimizer optimizer;  // built after set_qat: it holds the parameter tensors (the steps among them) it is given
  engine::Schedule sched;
  data::Loader train_loader, val_loader;
  fs::path folder;
  Log log;
  std::optional<TensorBoardLog> tb;
  std::unique_ptr<engine::GradReducer> reducer;
  std::unique_ptr<models::Model> teacher;  // --distill
  Distillation distill;
  int start_epoch = 0;
  size_t start_batch = 0;
  double best_top1 = -1, part_loss = 0, part_correct = 0, part_seen = 0;  // the epoch's running sums
  bool synced_qat_init = false;  // under mpirun: the quantizers' first-batch steps made rank 0's

  Run(const Options& o, Device dev, bool resuming)
      : opt(o), device(dev), arch(checked_arch(o)), d(open_data(o)), init_rng(o.seed),
        model_(models::make_model(with_classes(arch, d), init_rng, o.oabn_k)), model(*model_),
        optimizer((prepare(resuming), make_optimizer(model, o.lr, o.momentum, o.nesterov, o.wd, o.custom_l2))),
        sched(schedule(o)), train_loader(*d.train, o.batch_size, true, o.seed, threads, 4, shard(o)),
        val_loader(*d.val, o.batch_size, false, o.seed, threads, 4, shard(o)), folder(folder_of(o)),
        log{folder / "log.csv", o.dataset == "imagenet", {}} {
    if (train_loader.batches_per_epoch() == 0)
      throw std::runtime_error(fmt::format("{} training images make no batch of {}", d.train->size(), opt.batch_size));
    if (!o.distill.empty()) teacher = load_teacher(o, model.arch, device), distill = {teacher.get(), o.distill_t, o.distill_w};
    if (lead) fs::create_directories(folder);
  }

 private:
  static const models::ArchConfig& with_classes(models::ArchConfig& arch, const Data& d) {
    arch.num_classes = d.train->num_classes();
    return arch;
  }
  // --init (a fresh run only) and --qat, on the model, before the optimizer takes its parameters
  void prepare(bool resuming) {
    if (!opt.init.empty() && !resuming) load_init(opt, model);
    if (opt.qat) model.set_qat(qat_config(opt));
    model.to(device);
  }
  static data::Shard shard(const Options& o) {
    const data::Shard s{dist::rank(), dist::size()};
    if (o.batch_size % s.count != 0)
      throw std::runtime_error(fmt::format("--batch-size {} (the global batch) does not split into {} equal shards, one per "
                                           "process: give a multiple of {}", o.batch_size, s.count, s.count));
    return s;
  }
  static fs::path folder_of(const Options& o) {
    const fs::path f = o.out.empty() ? fs::path("runs") / fmt::format("{}-{}-{}", o.dataset, o.arch, now_string("%Y%m%d-%H%M%S"))
                                     : fs::path(o.out);
    return broadcast_string(f.string());  // the ranks' clocks may name it differently
  }
};

// The checkpoint of the run's state at `epoch`, `batch` (rank 0 writes it).
static void save(Run& r, const fs::path& path, int epoch, size_t batch) {
  if (!r.lead) return;
  const Options& opt = r.opt;
  layers::Metadata md = {{"arch", opt.arch}, {"dataset", opt.dataset}, {"epoch", std::to_string(epoch)},
                         {"batch", std::to_string(batch)}, {"best_top1", fmt::format("{}", r.best_top1)},
                         {"partial_loss", fmt::format("{}", r.part_loss)}, {"partial_correct", fmt::format("{}", r.part_correct)},
                         {"partial_seen", fmt::format("{}", r.part_seen)}, {"seed", std::to_string(opt.seed)},
                         {"oabn_k", fmt::format("{}", opt.oabn_k)}, {"num_classes", std::to_string(r.arch.num_classes)}};
  if (r.model.qat()) md.merge(models::qat_metadata(*r.model.qat()));
  std::map<std::string, st::Entry> extra;
  const auto& bufs = r.optimizer.sgd.momentum_buffers();
  for (size_t i = 0; i < bufs.size(); i++)
    if (bufs[i].defined()) extra["optim." + r.optimizer.names[i]] = layers::to_entry(bufs[i]);
  layers::save_checkpoint(path.string(), r.model, md, extra);
}

// --resume: the model, the optimizer's momentum, the epoch, batch and running sums of `ckpt`.
static void resume(Run& r, const fs::path& ckpt) {
  if (r.lead)
    for (const std::string& name : st::remove_stale_temporaries(r.folder.string()))
      std::printf("resume: removed %s, a checkpoint write that a killed run left unfinished\n", (r.folder / name).c_str());
  layers::Checkpoint c = layers::load_checkpoint(ckpt.string(), r.model);
  const std::string ck = ckpt.string();
  r.start_epoch = int(st::metadata_int(c.metadata, ck, "epoch", 0, r.opt.epochs));
  r.start_batch = size_t(st::metadata_int(c.metadata, ck, "batch", 0, int64_t(r.train_loader.batches_per_epoch())));
  r.best_top1 = st::metadata_double(c.metadata, ck, "best_top1", -1, 100);
  r.part_loss = st::metadata_double(c.metadata, ck, "partial_loss", 0, HUGE_VAL);
  r.part_correct = st::metadata_double(c.metadata, ck, "partial_correct", 0, HUGE_VAL);
  r.part_seen = st::metadata_double(c.metadata, ck, "partial_seen", 0, HUGE_VAL);
  engine::SGD& sgd = r.optimizer.sgd;
  auto& bufs = sgd.momentum_buffers();
  std::vector<Tensor> params;  // in the order of the buffers
  for (const engine::ParamGroup& g : sgd.groups()) params.insert(params.end(), g.params.begin(), g.params.end());
  for (size_t i = 0; i < bufs.size(); i++) {
    const std::string name = "optim." + r.optimizer.names[i];
    if (!c.extra.count(name)) continue;  // a buffer not made yet (a parameter without a gradient so far)
    // checked here, naming the file, not at the first step: F32 of its parameter's shape
    const st::Entry& e = st::require(c.extra, name, st::DType::F32, params[i].shape().vec(), ck);
    bufs[i] = layers::from_entry(e).to(r.device);
  }
  if (r.lead) r.log.load_completed(r.start_epoch);
  std::printf("resuming %s at epoch %d, batch %zu\n", ckpt.c_str(), r.start_epoch + 1, r.start_batch);
}

// A new run's config.json: how it was started and on what.
static void write_config(const Run& r, const std::vector<std::string>& argv) {
  nlohmann::json cfg = {{"argv", argv}, {"options", options_json(r.opt)}, {"git_commit", git_commit()},
                        {"threads", r.threads}, {"data_dir", r.d.dir}, {"num_classes", r.arch.num_classes},
                        {"train_images", r.d.train->size()}, {"val_images", r.d.val->size()},
                        {"created", now_string("%Y-%m-%dT%H:%M:%S")}};
  st::write_file_atomic((r.folder / "config.json").string(), cfg.dump(2) + "\n");
}

// Under mpirun: the ranks start from rank 0's state, and the gradients' bucketed all-reduce.
static void start_distributed(Run& r) {
  broadcast_state(r.model);
  r.reducer = make_reducer(r.model, r.opt.bucket_mb);
  if (r.opt.sync_bn) engine::set_batch_norm_sync([](double* v, size_t n) { dist::allreduce_sum(v, n); });
  std::printf("distributed: %d processes, %d images each per batch of %d, gradients in %zu buckets of at most %g MB "
              "(%s)\n", dist::size(), r.opt.batch_size / dist::size(), r.opt.batch_size, r.reducer->buckets(),
              r.opt.bucket_mb, r.device == Device::cuda ? "NCCL, one GPU per process" : "MPI");
  std::printf("BN statistics: %s\n", r.opt.sync_bn ? "the global batch's (--sync-bn)"
                                                    : "each process's shard's, running statistics averaged every step");
}

// What one epoch's steps measured in this process.
struct EpochStats {
  double images = 0, comm_seconds = 0, wait_seconds = 0, steps = 0;
  size_t passed_over = 0;
  Progress progress;
};

// The steps of one epoch, from start_batch on a mid-epoch resume: 0 when it ran through, 3 on a non-finite
// loss, 130 when interrupted (its state saved).
static int train_epoch(Run& r, int epoch, float lr, EpochStats& e) {
  const size_t total = r.train_loader.batches_per_epoch();
  size_t done = 0;
  for (; done < (epoch == r.start_epoch ? r.start_batch : 0); done++) r.train_loader.next();  // resume mid-epoch
  e.progress = Progress();  // timed from here
  const bool skip_together = dist::distributed() && r.opt.bad_images == "skip";
  Tensor x, y;
  while (const data::Batch* b = r.train_loader.next()) {
    // --bad-images skip under mpirun: a process whose share of the batch was all bad has nothing to step
    // with, and every collective must be called by all: the processes pass such a batch over together.
    if (skip_together) {
      double empty = b->n == 0 ? 1 : 0;
      dist::allreduce_sum(&empty, 1);
      if (empty > 0) {
        done++, e.passed_over++;
        continue;
      }
    }
    data::to_tensors(*b, r.device, x, y);
    const StepResult s = train_step(r.model, r.optimizer.sgd, x, y, r.opt.label_smoothing, r.opt.custom_l2 ? r.opt.wd : 0.0f,
                                    r.reducer.get(), g_interrupted, r.teacher ? &r.distill : nullptr);
    // A quantizer initializes its step from its first batch, which differs per rank: rank 0's wins.
    if (r.reducer && r.model.qat() && !r.synced_qat_init) broadcast_state(r.model), r.synced_qat_init = true;
    if (!s.stepped) {
      e.progress.end_line();
      const fs::path last = r.folder / "last.safetensors";
      if (r.lead)
        std::fprintf(stderr, "train: the loss is %f at epoch %d, batch %zu%s; stopping. %s\n", s.loss, epoch + 1, done + 1,
                     dist::distributed() ? " (on some rank)" : "",
                     fs::exists(last) ? ("The last good checkpoint is " + last.string()).c_str()
                                      : "No checkpoint was written before it (the run saves one at each epoch's end).");
      dist::barrier();  // mpirun ends the job at the first rank that exits non-zero
      return 3;
    }
    done++;
    e.steps++;
    if (r.reducer) e.comm_seconds += r.reducer->comm_seconds(), e.wait_seconds += r.reducer->wait_seconds();
    e.images += s.images;
    r.part_loss += double(s.loss) * s.images;
    r.part_correct += s.correct;
    r.part_seen += s.images;
    const double loss = r.part_loss / r.part_seen, top1 = 100 * r.part_correct / r.part_seen;
    e.progress.update(epoch, r.opt.epochs, done, total, loss, top1, e.images);
    if (r.tb) r.tb->step(int64_t(epoch * total + done), loss, top1, lr);
    if (s.interrupted) {
      e.progress.end_line();
      save(r, r.folder / "last.safetensors", epoch, done);
      dist::barrier();  // rank 0's checkpoint is written before any rank exits
      std::printf("interrupted: state saved in %s; resume with ./train --resume %s\n",
                  (r.folder / "last.safetensors").c_str(), r.folder.c_str());
      g_interrupted = false;
      return 130;
    }
  }
  e.progress.end_line();
  return 0;
}

// After an epoch's steps: the evaluation (every --eval-every epochs and the last), log.csv, TensorBoard,
// the epoch's line, and the checkpoints (best.safetensors on a better top-1, last.safetensors always).
static void end_epoch(Run& r, int epoch, float lr, const EpochStats& e) {
  if (r.lead && e.passed_over > 0)
    std::fprintf(stderr, "train: %zu batches passed over by every process: some process's share of each was all bad images\n",
                 e.passed_over);
  const double train_seconds = e.progress.seconds();
  const bool eval_now = (epoch + 1) % r.opt.eval_every == 0 || epoch + 1 == r.opt.epochs;
  EvalResult ev;
  if (eval_now) ev = evaluate(r.model, r.val_loader, r.device);
  const double seconds = e.progress.seconds(), img_per_s = e.images / std::max(train_seconds, 1e-9);
  const double loss = r.part_loss / r.part_seen, top1 = 100 * r.part_correct / r.part_seen;
  std::string row = fmt::format("{},{:.6g},{:.6f},{:.4f}", epoch + 1, lr, loss, top1);
  row += eval_now ? fmt::format(",{:.6f},{:.4f}", ev.loss, ev.top1) : ",,";
  if (r.log.top5) row += eval_now ? fmt::format(",{:.4f}", ev.top5) : ",";
  row += fmt::format(",{:.2f},{:.2f}", seconds, img_per_s);
  r.log.rows.push_back(row);
  if (r.lead) r.log.write();
  if (r.tb) r.tb->epoch(epoch + 1, loss, top1, eval_now ? &ev : nullptr, r.log.top5, img_per_s);
  if (r.tb && r.model.qat()) r.tb->quantizer_steps(epoch + 1, r.model);
  std::printf("epoch %d/%d  lr %.5g  train loss %.4f  top-1 %.2f%%", epoch + 1, r.opt.epochs, lr, loss, top1);
  if (eval_now) {
    std::printf("  |  val loss %.4f  top-1 %.2f%%", ev.loss, ev.top1);
    if (r.log.top5) std::printf("  top-5 %.2f%%", ev.top5);
  }
  std::printf("  (%.1f s)\n", seconds);
  if (r.reducer && e.steps > 0)
    std::printf("all-reduce: %.2f ms per step from the first bucket's start, %.2f ms of it waited after the backward "
                "(%.0f%% overlapped)\n", 1e3 * e.comm_seconds / e.steps, 1e3 * e.wait_seconds / e.steps,
                e.comm_seconds > 0 ? 100 * (1 - e.wait_seconds / e.comm_seconds) : 0.0);
  std::fflush(stdout);
  r.part_loss = r.part_correct = r.part_seen = 0;
  if (eval_now && ev.top1 > r.best_top1) {
    r.best_top1 = ev.top1;
    save(r, r.folder / "best.safetensors", epoch + 1, 0);
  }
  save(r, r.folder / "last.safetensors", epoch + 1, 0);
}

int run_training(Options opt, const std::vector<std::string>& argv) {
  if (dist::rank() == 0) std::printf("cpu: %s\n", engine::cpu_summary().c_str());
  fs::path resume_ckpt;
  if (!opt.resume.empty()) opt = resume_options(opt, argv, resume_ckpt);
  const Device device = set_up_process(opt);
  Run r(opt, device, !resume_ckpt.empty());
  if (!resume_ckpt.empty()) resume(r, resume_ckpt);
  else if (r.lead) write_config(r, argv);
  if (r.lead) link_latest(r.folder);
  if (r.lead) r.tb.emplace(r.folder.string());
  std::printf("run %s: %s on %s (%zu train, %zu val images), %d threads, %s\n", r.folder.c_str(), opt.arch.c_str(),
              opt.dataset.c_str(), r.d.train->size(), r.d.val->size(), r.threads, engine::device_name(device));
  if (dist::distributed()) start_distributed(r);
  std::fflush(stdout);

  r.model.train();
  for (int epoch = r.start_epoch; epoch < opt.epochs; epoch++) {
    const float lr = r.sched.lr_at(epoch);
    r.optimizer.sgd.set_lr(lr);
    r.train_loader.start_epoch(epoch);
    if (epoch != r.start_epoch || r.start_batch == 0) {
      r.part_loss = r.part_correct = r.part_seen = 0;
      r.model.request_codebook_resets();  // ClusterQAT Algorithm 2 line 2 (a mid-epoch resume keeps the codebooks)
    }
    EpochStats e;
    if (const int status = train_epoch(r, epoch, lr, e)) return status;
    end_epoch(r, epoch, lr, e);
  }
  std::printf("done: best val top-1 %.2f%%; checkpoints in %s\n", r.best_top1, r.folder.c_str());
  return 0;
}

}  // namespace train
