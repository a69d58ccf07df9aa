// Model speed against the peers (bench/torch_peer.py: PyTorch eager and torch.compile, onnxruntime, OpenVINO),
// one case per run, ours and each peer timed alternately one call at a time in the same run (ours, torch,
// torch_cl, compile, compile_cl, ort, ov, ours, ...), so that the ratios hold on a machine whose load changes.
// Prints one line:
//   bench CASE ours=X torch=.. torch_cl=.. compile=.. compile_cl=.. ort=.. ov=.. vs_best=V best=NAME unit=img/s
//         gflops=G allocs=A primitives=P isa=I convs=C
// Each rate is the median over --reps calls, after --warmup untimed calls each; a peer that does not apply
// says "-", one whose package is missing "absent", one that raised "failed:REASON" (failed:signal_N: its
// process crashed; each peer runs in its own); vs_best is ours over the fastest peer. The infer cases write our deploy model as ONNX (interop/onnx.h, as ./export does; QDQ
// for the int8 cases) to a temporary file, which onnxruntime and OpenVINO run. gflops is ours' achieved
// rate by the convention 2 x MACs per image (models::model_size, the form that runs: training form for the
// train cases, deploy form for the infer cases) x 3 for a training step (forward, backward-data,
// backward-weights), times img/s. allocs and primitives are the system allocations (alloc_stats) and
// oneDNN primitives created during the timed calls: 0 in a steady state. Batch-1 cases also print each
// side's milliseconds per call (lat_ms_NAME=).
//
// Cases (as torch_peer.py): train-cifar, train-cifar-oabn, infer-cifar-deploy, train-a0, infer-a0-deploy and
// infer-a0-deploy-b1 (batch 1), infer-resnet18-deploy (torchvision ResNet-18 deployed, batch 32),
// the QAT steps train-cifar-bnest (FP, merged, estimated BN), train-cifar-merged-qat, train-cifar-repq-bn,
// train-cifar-repq-bnest, train-cifar-cluster, train-cifar-acb-repq-bn (RepQ-BN of acb-cifar, ACNet's blocks;
// the others repvgg-cifar) (4 bits; set_qat, make_optimizer and train_step of trainer/step.h, steps and
// codebooks initialized before the warm-up; the cluster case also times its quantizers alone on the merged
// kernels: quant_ms= every layer's ClusterQuantizer forward, assign_ms= its
// nearest-entry assignment (Algorithm 2 line 5) alone, share= quant_ms over the step's milliseconds), the integer models infer-cifar-int8, infer-a0-int8 and infer-a0-int8-b1
// (batch 1), whose peers are PyTorch's int8 path (torch, torch_cl) and onnxruntime and OpenVINO on the
// QDQ export of our quantized model (ort, ov), and which also time our FP32 deploy forward of the same
// model in the same run: fp32= its rate, vs_fp32= ours over it, impl= the oneDNN implementations of the int8
// layers,
// and ceiling: one 3x3 convolution [32, 256, 56, 56] -> 256 channels, pad 1, no bias, through a oneDNN
// primitive in its preferred (blocked) layouts with no reorder timed: the FP32 conv rate this machine
// gives; unit GFLOP/s.
// The same cases on the GPU, named gpu-<case> (the peer runs torch_peer.py --case gpu-<case> on CUDA): the
// model, its inputs and the optimizer live on the GPU and each call ends with a synchronize; gpu-ceiling is
// our conv2d (cuDNN) on that convolution. allocs counts cudaMalloc calls; primitives is n/a. Without a usable
// GPU a gpu-* case prints "bench gpu-CASE skipped: REASON" and exits 0.
//
// Usage: model_bench --case NAME [--warmup W] [--reps R] [--threads T] [--python PY | --no-torch | --vs BIN]
//   --python PY: the python that runs bench/torch_peer.py (bench/run.sh: build/peers-venv's when present)
//   --vs BIN: the peer is another build of this program (e.g. of an older commit) instead of torch_peer.py,
//   for before/after ratios on a busy machine ("vs=" then reports BIN's rate).
//   --serve: be such a peer (as torch_peer.py --serve: "ready" after the warm-up, then one timed call per
//   line of stdin, its seconds printed).
#include <fcntl.h>
#include <omp.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "engine/allocator.h"
#include "engine/autograd.h"
#include "engine/cuda/cuda_backend.h"
#include "engine/cpu/dnnl.h"
#include "engine/ops.h"
#include "engine/optim.h"
#include "engine/random.h"
#include "models/repvgg.h"
#include "deploy/integer_model.h"
#include "interop/onnx.h"
#include "quant/deploy_export.h"
#include "quant/ptq_model.h"
#include "trainer/step.h"

using namespace engine;

struct Case {
  std::string arch;
  int batch, resolution;
  bool train;
  float oabn_k;
  std::string qat = "";  // a RepVGG::set_qat method (4 bits): stepped by trainer/step.h's train_step
  bool int8 = false;     // the quantized deploy model on the integer kernels (deploy/integer_model.h)
  int act_bits = 8;      // int8: the activations' bits (7: one convolution a layer without VNNI, docs/int8.md)
};

static const std::map<std::string, Case> kCases = {
    {"train-cifar", {"repvgg-cifar", 128, 32, true, 0.f}},
    {"train-cifar-oabn", {"repvgg-cifar", 128, 32, true, 3.f}},
    {"infer-cifar-deploy", {"repvgg-cifar", 128, 32, false, 0.f}},
    {"train-a0", {"repvgg-a0", 32, 224, true, 0.f}},
    {"infer-a0-deploy", {"repvgg-a0", 32, 224, false, 0.f}},
    {"infer-a0-deploy-b1", {"repvgg-a0", 1, 224, false, 0.f}},
    {"infer-resnet18-deploy", {"resnet18", 32, 224, false, 0.f}},
    {"train-cifar-bnest", {"repvgg-cifar", 128, 32, true, 0.f, "bnest"}},
    {"train-cifar-merged-qat", {"repvgg-cifar", 128, 32, true, 0.f, "merged"}},
    {"train-cifar-repq-bn", {"repvgg-cifar", 128, 32, true, 0.f, "repq-bn"}},
    {"train-cifar-acb-repq-bn", {"acb-cifar", 128, 32, true, 0.f, "repq-bn"}},
    {"train-cifar-repq-bnest", {"repvgg-cifar", 128, 32, true, 0.f, "repq-bnest"}},
    {"train-cifar-cluster", {"repvgg-cifar", 128, 32, true, 0.f, "cluster"}},
    {"infer-cifar-int8", {"repvgg-cifar", 128, 32, false, 0.f, "", true}},
    {"infer-a0-int8", {"repvgg-a0", 32, 224, false, 0.f, "", true}},
    {"infer-a0-int8-b1", {"repvgg-a0", 1, 224, false, 0.f, "", true}},
    {"infer-cifar-int8-a7", {"repvgg-cifar", 128, 32, false, 0.f, "", true, 7}},
    {"infer-a0-int8-a7", {"repvgg-a0", 32, 224, false, 0.f, "", true, 7}},
};

static double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

static double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// A peer in --serve mode: a child process (bench/torch_peer.py --peer NAME, or another build of this program)
// that warms up, names its peer on its "ready" line (NAME, or NAME=VALUE for one not timed), then times one
// call per line we send it. Each peer has its own process: one that crashes takes only itself down.
class Peer {
 public:
  // Runs `args`; `name` is the peer's name where the process does not say it (another build of this
  // program, of any commit, prints a bare "ready"), or where it never gets ready.
  Peer(std::vector<std::string> args, const std::string& name) {
    // close-on-exec: a later peer must not inherit this one's pipe ends (its stdin would never see EOF)
    int to_child[2], from_child[2];
    if (pipe2(to_child, O_CLOEXEC) || pipe2(from_child, O_CLOEXEC)) return;
    pid_ = fork();
    if (pid_ == 0) {
      dup2(to_child[0], 0);
      dup2(from_child[1], 1);
      close(to_child[1]);
      close(from_child[0]);
      std::vector<char*> argv;
      for (std::string& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      execvp(argv[0], argv.data());
      _exit(127);
    }
    close(to_child[0]);
    close(from_child[1]);
    in_ = fdopen(to_child[1], "w");
    out_ = fdopen(from_child[0], "r");
    char line[4096];
    ready_ = pid_ > 0 && std::fgets(line, sizeof line, out_) && std::strncmp(line, "ready", 5) == 0;
    if (!ready_) {
      entries_ = {{name, why_not()}};
      return;
    }
    std::istringstream tokens(line + 5);
    for (std::string t; tokens >> t;) {
      const size_t eq = t.find('=');
      entries_.push_back(eq == std::string::npos ? Entry{t, ""} : Entry{t.substr(0, eq), t.substr(eq + 1)});
    }
    if (entries_.empty()) entries_ = {{name, ""}};
    for (const Entry& e : entries_)
      if (e.value.empty()) times_.emplace_back();
  }
  ~Peer() {
    if (in_) std::fclose(in_);  // the peer exits at the end of its input
    if (out_) std::fclose(out_);
    if (pid_ > 0) waitpid(pid_, nullptr, 0);
  }
  // What the process names: a timed peer has an empty value; the others say why not ("-", "absent",
  // "failed:...").
  struct Entry {
    std::string name, value;
  };
  const std::vector<Entry>& entries() const { return entries_; }
  // Seconds of each timed entry's calls, in order (negative for a call that raised).
  const std::vector<std::vector<double>>& times() const { return times_; }
  // Times one call of each timed entry; nothing once the process is gone.
  void time_one() {
    char line[4096];
    if (!ready_ || std::fputs("rep\n", in_) < 0 || std::fflush(in_) || !std::fgets(line, sizeof line, out_)) {
      ready_ = false;
      return;
    }
    std::vector<double> t;
    std::istringstream in(line);
    for (double v; in >> v;) t.push_back(v);
    if (t.size() != times_.size()) ready_ = false;
    for (size_t k = 0; ready_ && k < t.size(); k++) times_[k].push_back(t[k]);
  }

 private:
  // Why a process never got ready: torch_peer.py exits 2 when it cannot import PyTorch, 127 is a failed exec.
  std::string why_not() {
    if (in_) std::fclose(in_);
    in_ = nullptr;
    int status = 0;
    if (pid_ <= 0 || waitpid(pid_, &status, 0) != pid_) return "failed:start";
    pid_ = -1;
    if (WIFSIGNALED(status)) return "failed:signal_" + std::to_string(WTERMSIG(status));
    if (WEXITSTATUS(status) == 2 || WEXITSTATUS(status) == 127) return "absent";  // 127: no such program
    return "failed:exit_" + std::to_string(WEXITSTATUS(status));
  }

  pid_t pid_ = -1;
  FILE *in_ = nullptr, *out_ = nullptr;
  bool ready_ = false;
  std::vector<Entry> entries_;
  std::vector<std::vector<double>> times_;
};

// Our side of a case: the call to time and the work units (images, or FLOP for the ceiling) per call.
struct Ours {
  std::function<void()> call;
  double units_per_call;
  double flop_per_unit;
  std::function<void()> fp32 = nullptr;  // int8 cases: our FP32 deploy forward, timed alternately too
  std::string impl = "";                 // int8 cases: the oneDNN implementations of the int8 layers
  std::function<void()> quantizers = nullptr, assign = nullptr;  // the cluster case: its quantizers alone
  std::string onnx = "";  // the infer cases: the model as ./export writes it (QDQ for int8), for onnxruntime and OpenVINO
};

// Our deploy model as ONNX (interop/onnx.h, the graph ./export writes; QDQ at its quantizers if `qdq`).
static std::string onnx_of(models::Model& model, int image_size, bool qdq) {
  interop::OnnxOptions opt;
  opt.image_size = image_size;
  opt.qdq = qdq;
  return interop::to_onnx(model, opt);
}

// The cluster case's quantizers on the model's merged kernels (running statistics, as they fold in
// training): every layer's forward (lines 5-10, host copies included), and the assignment (line 5) alone.
static void time_cluster_quantizers(models::Model& model, Ours& ours) {
  std::vector<std::pair<layers::ClusterQuantizer*, Tensor>> coded;
  {
    NoGradGuard no_grad;
    for (auto& b : model.blocks())
      if (b->quant.cluster) coded.push_back({b->quant.cluster.get(), b->equivalent_kernel_bias().kernel});
  }
  ours.quantizers = [coded] {
    for (auto& [q, m] : coded) q->forward(m);
  };
  ours.assign = [coded] {
    for (auto& [q, m] : coded) q->codes(m);
  };
}

// A file of `contents` under /tmp for the peers, removed at the end of the run; no file for empty contents.
struct TempFile {
  std::string path;
  explicit TempFile(const std::string& contents) {
    if (contents.empty()) return;
    char name[] = "/tmp/model_bench_XXXXXX.onnx";
    const int fd = mkstemps(name, 5);
    if (fd < 0) return;
    if (write(fd, contents.data(), contents.size()) == (ssize_t)contents.size()) path = name;
    else unlink(name);
    close(fd);
  }
  ~TempFile() {
    if (!path.empty()) unlink(path.c_str());
  }
};

// Ends a timed call: the GPU's queued work is part of it.
static void finish(Device device) {
  if (device == Device::cuda) cuda::synchronize();
}

// The deployed model quantized as ./ptq's default (8 bits, per-channel weight scales, stage0 and the FC FP32;
// every activation step 0.05: speed does not depend on the values; the -a7 cases: 7-bit activations),
// exported and run on the integer kernels; beside it the same deployed model's FP32 forward, and the same
// quantized model in QDQ form for the ONNX peers.
static Ours int8_case(std::shared_ptr<models::Model> model, const Tensor& x, double flop_per_image, int act_bits) {
  const auto& blocks = model->blocks();
  for (size_t i = 1; i < blocks.size(); i++) {
    auto act = std::make_shared<layers::Quantizer>(act_bits, layers::Codes::unsigned_act);
    act->set_step({0.05f});
    const std::vector<float> s = quant::weight_scales(blocks[i]->rbr_reparam->weight, 8, quant::Granularity::channel);
    auto weight = std::make_shared<layers::Quantizer>(8, layers::Codes::weight, (int64_t)s.size());
    weight->set_step(s);
    blocks[i]->quant.set(act, weight);
  }
  auto im = std::make_shared<deploy::IntegerModel>(quant::export_int8(*model, "ptq-minmax", "channel", {}));
  const std::string qdq = onnx_of(*model, (int)x.size(3), true);
  quant::remove_quantizers(*model);  // the FP32 deploy model again
  model->freeze();                   // its weights constants, as the peers' (layers/module.h)
  im->forward(x);
  std::string impl;
  for (const std::string& line : im->describe()) {
    const std::string name = line.substr(line.rfind(' ') + 1);
    if (line.find("u8 ->") != std::string::npos && impl.find(name) == std::string::npos) impl += (impl.empty() ? "" : ",") + name;
  }
  return {[im, x] { im->forward(x); }, (double)x.size(0), flop_per_image,
          [model, x] {
            NoGradGuard no_grad;
            model->forward(x);
          },
          impl, nullptr, nullptr, qdq};
}

static Ours model_case(const Case& c, Device device) {
  models::ArchConfig arch = models::arch_config(c.arch);
  Rng rng(0);
  std::shared_ptr<models::Model> model = models::make_model(arch, rng, c.oabn_k);
  Tensor x = rand_normal({c.batch, 3, c.resolution, c.resolution}, 0.f, 1.f, rng);
  Tensor labels = Tensor::empty({c.batch}, DType::i32);
  for (int i = 0; i < c.batch; i++) labels.data<int32_t>()[i] = (int32_t)rng.below(arch.num_classes);
  // the form that runs: the QAT cases' convs are the merged ones (RepQ-BN's statistics convs not counted)
  double macs = (double)models::model_size(arch, !c.train || !c.qat.empty(), c.resolution).macs;
  x = x.to(device);
  labels = labels.to(device);
  if (!c.train) {
    model->switch_to_deploy();
    model->eval();
    model->to(device);
    if (c.int8) return int8_case(model, x, 2 * macs, c.act_bits);
    model->freeze();  // its weights constants, as onnxruntime's and OpenVINO's (layers/module.h)
    Ours ours{[model, x, device] {
                NoGradGuard no_grad;
                model->forward(x);
                finish(device);
              },
              (double)c.batch, 2 * macs};
    if (device == Device::cpu) ours.onnx = onnx_of(*model, c.resolution, false);
    return ours;
  }
  model->train();
  if (!c.qat.empty()) {
    models::QatConfig qat;
    qat.method = *models::parse_qat_method(c.qat);
    qat.bits = qat.act_bits = 4;
    model->set_qat(qat);
    model->to(device);
    {
      NoGradGuard no_grad;
      model->forward(x);  // the quantizers' steps initialize on the first batch: not timed
    }
    auto opt = std::make_shared<train::Optimizer>(train::make_optimizer(*model, 0.1f, 0.9f, false, 1e-4f, false));
    Ours ours{[model, opt, x, labels, device] {
                train::train_step(*model, opt->sgd, x, labels, 0.f, 0.f);
                finish(device);
              },
              (double)c.batch, 3 * 2 * macs};
    if (qat.traits().cluster) time_cluster_quantizers(*model, ours);
    return ours;
  }
  model->to(device);
  // torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4), as the peer
  ParamGroup all;
  for (const layers::Param& p : model->parameters()) all.params.push_back(p.tensor);
  auto sgd = std::make_shared<SGD>(std::vector<ParamGroup>{all}, 0.1f, 0.9f);
  return {[model, sgd, x, labels, device] {
            model->zero_grad();  // set_to_none, as the peer
            cross_entropy(model->forward(x), labels).backward();
            sgd->step();
            finish(device);
          },
          (double)c.batch, 3 * 2 * macs};
}

// The ceiling: a oneDNN 3x3 convolution in the layouts it picks (blocked), primitive only.
static Ours ceiling_case() {
  using dnnl::memory;
  const int64_t n = 32, c = 256, hw = 56, k = 256;
  auto md = [](memory::dims d) { return memory::desc(d, memory::data_type::f32, memory::format_tag::any); };
  dnnl::convolution_forward::desc desc(dnnl::prop_kind::forward_inference, dnnl::algorithm::convolution_direct,
                                       md({n, c, hw, hw}), md({k, c, 3, 3}), md({n, k, hw, hw}), {1, 1}, {1, 1},
                                       {1, 1});
  dnnl::convolution_forward::primitive_desc pd(desc, cpu::dnnl_engine());
  auto prim = std::make_shared<dnnl::convolution_forward>(pd);
  auto src = std::make_shared<memory>(pd.src_desc(), cpu::dnnl_engine());
  auto wei = std::make_shared<memory>(pd.weights_desc(), cpu::dnnl_engine());
  auto dst = std::make_shared<memory>(pd.dst_desc(), cpu::dnnl_engine());
  auto scratch = std::make_shared<memory>(pd.scratchpad_desc(), cpu::dnnl_engine());
  for (auto* m : {src.get(), wei.get()}) {
    float* p = (float*)m->get_data_handle();
    for (size_t i = 0; i < m->get_desc().get_size() / 4; i++) p[i] = 0.01f * (float)(i % 97) - 0.4f;
  }
  auto stream = std::make_shared<dnnl::stream>(cpu::dnnl_engine());
  double flop = 2.0 * n * hw * hw * k * c * 9;
  return {[=] {
            prim->execute(*stream, {{DNNL_ARG_SRC, *src}, {DNNL_ARG_WEIGHTS, *wei}, {DNNL_ARG_DST, *dst},
                                    {DNNL_ARG_SCRATCHPAD, *scratch}});
            stream->wait();
          },
          flop / 1e9, 1e9};
}

// The ceiling's convolution on the GPU: our conv2d op (cuDNN, its algorithm cached after the first call).
static Ours gpu_ceiling_case() {
  const int64_t n = 32, c = 256, hw = 56, k = 256;
  Rng rng(0);
  Tensor x = rand_normal({n, c, hw, hw}, 0.f, 1.f, rng).to(Device::cuda);
  Tensor w = rand_normal({k, c, 3, 3}, 0.f, 0.02f, rng).to(Device::cuda);
  double flop = 2.0 * n * hw * hw * k * c * 9;
  return {[x, w] {
            NoGradGuard no_grad;
            conv2d(x, w, Tensor(), 1, 1);
            cuda::synchronize();
          },
          flop / 1e9, 1e9};
}

// base: the case's name without its "gpu-" prefix.
static Ours make_case(const std::string& base, bool gpu) {
  if (base == "ceiling") return gpu ? gpu_ceiling_case() : ceiling_case();
  return model_case(kCases.at(base), gpu ? Device::cuda : Device::cpu);
}

int main(int argc, char** argv) {
  std::string name, peer_program = "/usr/bin/python3";
  int warmup = 2, reps = 5, threads = 2;
  bool torch = true, serve = false;
  for (int i = 1; i < argc; i++) {
    std::string a = argv[i];
    auto value = [&] {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", a.c_str());
        std::exit(2);
      }
      return std::string(argv[++i]);
    };
    if (a == "--case") name = value();
    else if (a == "--warmup") warmup = std::stoi(value());
    else if (a == "--reps") reps = std::stoi(value());
    else if (a == "--threads") threads = std::stoi(value());
    else if (a == "--python") peer_program = value();
    else if (a == "--vs") peer_program = value();
    else if (a == "--no-torch") torch = false;
    else if (a == "--serve") serve = true;
    else {
      std::fprintf(stderr, "usage: model_bench --case NAME [--warmup W] [--reps R] [--threads T] [--python PY | --no-torch | --vs BIN] [--serve]\n");
      return 2;
    }
  }
  const bool gpu = name.rfind("gpu-", 0) == 0;
  const std::string base = gpu ? name.substr(4) : name;
  const bool ceiling = base == "ceiling";
  if (!ceiling && !kCases.count(base)) {
    std::fprintf(stderr, "model_bench: unknown case '%s' (ceiling", name.c_str());
    for (auto& [k, v] : kCases) std::fprintf(stderr, ", %s", k.c_str());
    std::fprintf(stderr, ", and each as gpu-NAME)\n");
    return 2;
  }
  if (gpu && !cuda::available()) {
    std::printf("bench %s skipped: %s\n", name.c_str(), cuda::unavailable_reason().c_str());
    return 0;
  }
  if (reps < 1 || warmup < 0) {
    std::fprintf(stderr, "model_bench: --reps must be >= 1 and --warmup >= 0\n");
    return 2;
  }
  omp_set_num_threads(threads);
  signal(SIGPIPE, SIG_IGN);

  if (serve) {
    Ours ours = make_case(base, gpu);
    for (int i = 0; i < warmup; i++) ours.call();
    std::printf("ready\n");
    std::fflush(stdout);
    char line[64];
    while (std::fgets(line, sizeof line, stdin)) {
      double t0 = now();
      ours.call();
      std::printf("%.6f\n", now() - t0);
      std::fflush(stdout);
    }
    return 0;
  }

  // Ours is built first (the peers may need its ONNX file), then the peers warm up alone, one after the
  // other, then ours.
  Ours ours = make_case(base, gpu);
  TempFile onnx(ours.onnx);
  std::vector<std::unique_ptr<Peer>> peers;
  const bool vs = peer_program.size() >= 11 && peer_program.compare(peer_program.size() - 11, 11, "model_bench") == 0;
  const std::vector<std::string> common = {"--case", name, "--threads", std::to_string(threads), "--warmup",
                                           std::to_string(warmup), "--serve"};
  if (torch && vs) {
    std::vector<std::string> args = {peer_program};
    args.insert(args.end(), common.begin(), common.end());
    peers.push_back(std::make_unique<Peer>(args, "vs"));
  } else if (torch) {
    for (const char* p : {"torch", "torch_cl", "compile", "compile_cl", "ort", "ov"}) {
      std::vector<std::string> args = {peer_program, "bench/torch_peer.py", "--peer", p};
      args.insert(args.end(), common.begin(), common.end());
      if (!onnx.path.empty()) args.insert(args.end(), {"--onnx", onnx.path});
      peers.push_back(std::make_unique<Peer>(args, p));
    }
  }
  for (int i = 0; i < warmup; i++) ours.call();

  if (ours.fp32)
    for (int i = 0; i < warmup; i++) ours.fp32();
  const Device device = gpu ? Device::cuda : Device::cpu;
  const uint64_t allocs0 = alloc_stats(device).system_allocs, prims0 = cpu::dnnl_primitives_created();
  std::vector<double> t_ours, t_fp32;
  for (int i = 0; i < reps; i++) {
    double t0 = now();
    ours.call();
    t_ours.push_back(now() - t0);
    if (ours.fp32) {
      t0 = now();
      ours.fp32();
      t_fp32.push_back(now() - t0);
    }
    for (auto& peer : peers) peer->time_one();
  }
  const uint64_t allocs = alloc_stats(device).system_allocs - allocs0, prims = cpu::dnnl_primitives_created() - prims0;
  std::vector<double> t_quant, t_assign;  // the cluster case, after the counted calls
  for (int i = 0; ours.quantizers && i < reps; i++) {
    double t0 = now();
    ours.quantizers();
    t_quant.push_back(now() - t0);
    t0 = now();
    ours.assign();
    t_assign.push_back(now() - t0);
  }

  const double ours_rate = ours.units_per_call / median(t_ours);
  const bool latency = !ceiling && ours.units_per_call == 1;  // batch 1: milliseconds per call too
  std::string peer_part, latency_part;
  char buf[256];
  if (latency) {
    std::snprintf(buf, sizeof buf, " lat_ms_ours=%.2f", 1e3 * median(t_ours));
    latency_part = buf;
  }
  // Each peer's rate, or why it has none (failed:call: a call raised, or the process died); vs_best is ours
  // over the fastest.
  double best = 0;
  std::string best_name;
  for (const auto& peer : peers) {
    size_t k = 0;
    for (const Peer::Entry& e : peer->entries()) {
      if (!e.value.empty()) {
        peer_part += " " + e.name + "=" + e.value;
        continue;
      }
      const std::vector<double>& t = peer->times()[k++];
      if ((int)t.size() != reps || *std::min_element(t.begin(), t.end()) < 0) {
        peer_part += " " + e.name + "=failed:call";
        continue;
      }
      const double rate = ours.units_per_call / median(t);
      std::snprintf(buf, sizeof buf, " %s=%.2f", e.name.c_str(), rate);
      peer_part += buf;
      if (latency) {
        std::snprintf(buf, sizeof buf, " lat_ms_%s=%.2f", e.name.c_str(), 1e3 * median(t));
        latency_part += buf;
      }
      if (rate > best) best = rate, best_name = e.name;
    }
  }
  if (peers.empty()) peer_part = " torch=absent";
  if (best > 0) {
    std::snprintf(buf, sizeof buf, " vs_best=%.2f best=%s", ours_rate / best, best_name.c_str());
    peer_part += buf;
  }
  const std::string prim_part = gpu ? "n/a" : std::to_string(prims);
  if (ours.fp32) {  // the int8 cases: our FP32 deploy forward in the same run
    const double fp32_rate = ours.units_per_call / median(t_fp32);
    std::snprintf(buf, sizeof buf, " fp32=%.2f vs_fp32=%.2f", fp32_rate, ours_rate / fp32_rate);
    peer_part += buf;
    if (latency) {
      std::snprintf(buf, sizeof buf, " lat_ms_fp32=%.2f", 1e3 * median(t_fp32));
      latency_part += buf;
    }
  }
  peer_part += latency_part;
  if (ours.fp32) peer_part += " impl=" + ours.impl;
  if (ours.quantizers) {
    std::snprintf(buf, sizeof buf, " quant_ms=%.2f assign_ms=%.2f share=%.1f%%", 1e3 * median(t_quant), 1e3 * median(t_assign),
                  100 * median(t_quant) / median(t_ours));
    peer_part += buf;
  }
  // the ISA oneDNN dispatched to and every convolution implementation this case made (one case a process)
  std::string convs;
  for (const std::string& impl : cpu::dnnl_implementations())
    if (impl.rfind("convolution ", 0) == 0) convs += (convs.empty() ? "" : ",") + impl.substr(12);
  const std::string machine = " isa=" + cpu::dnnl_isa() + " convs=" + (convs.empty() ? "none" : convs);
  if (ceiling)
    std::printf("bench %s ours=%.2f%s unit=GFLOP/s%s\n", name.c_str(), ours_rate, peer_part.c_str(), machine.c_str());
  else
    std::printf("bench %s ours=%.2f%s unit=img/s gflops=%.1f allocs=%llu primitives=%s%s\n", name.c_str(), ours_rate,
                peer_part.c_str(), ours_rate * ours.flop_per_unit / 1e9, (unsigned long long)allocs,
                prim_part.c_str(), machine.c_str());
  std::fflush(stdout);
}
