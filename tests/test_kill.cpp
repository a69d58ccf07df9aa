// ./train killed with SIGKILL at random moments, and on a disk too small for its checkpoint: the run folder
// always holds a loadable last checkpoint, the run resumes, and a failed write names the file and keeps the
// previous checkpoint. The trainer runs in a child process, `run_tests --train ARGS` (tests/main.cpp).
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fcntl.h>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <thread>

#include "engine/random.h"
#include "layers/checkpoint.h"
#include "models/repvgg.h"
#include "tests/testing.h"

namespace fs = std::filesystem;

namespace {

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// A running `run_tests --train args`, its output in `log`; file_limit > 0 caps the size of any file it
// writes (RLIMIT_FSIZE, SIGXFSZ ignored: a write past it fails with EFBIG, as on a full disk).
struct Child {
  pid_t pid = -1;
  Child(const std::vector<std::string>& args, const fs::path& log, rlim_t file_limit = 0) {
    std::vector<std::string> all = {"run_tests", "--train"};
    all.insert(all.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (auto& a : all) argv.push_back(a.data());
    argv.push_back(nullptr);
    const std::string log_path = log.string();
    pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {  // only async-signal-safe calls until exec
      int fd = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      if (fd >= 0) ::dup2(fd, 1), ::dup2(fd, 2);
      if (file_limit > 0) {
        ::signal(SIGXFSZ, SIG_IGN);
        struct rlimit r = {file_limit, file_limit};
        ::setrlimit(RLIMIT_FSIZE, &r);
      }
      ::execv("/proc/self/exe", argv.data());
      ::_exit(127);
    }
  }
  bool running() { return ::waitpid(pid, &status, WNOHANG) == 0; }
  int wait() {  // the exit status, or 128 + the signal
    if (!done) ::waitpid(pid, &status, 0);
    done = true;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }
  int kill() {
    ::kill(pid, SIGKILL);
    return wait();
  }
  int status = 0;
  bool done = false;
};

// A checkpoint (`name`, or any) that process pid is writing under dir: write_file_atomic's
// "<name>.tmp.<pid>". (A killed writer leaves its temporary file behind; the file it was replacing is whole.)
bool writing(const fs::path& dir, pid_t pid, const std::string& name = "") {
  std::error_code ec;
  for (auto it = fs::directory_iterator(dir, ec); !ec && it != fs::directory_iterator(); it.increment(ec)) {
    const std::string f = it->path().filename().string();
    if (f.ends_with(".safetensors.tmp." + std::to_string(pid)) && f.starts_with(name)) return true;
  }
  return false;
}

// The last checkpoint's epoch, after checking that it loads into the run's model.
int64_t loadable_epoch(const fs::path& ckpt) {
  engine::Rng rng(0);
  models::RepVGG model(models::arch_config("repvgg-cifar"), rng);
  layers::Checkpoint c = layers::load_checkpoint(ckpt.string(), model);
  return st::metadata_int(c.metadata, ckpt.string(), "epoch", 0, 1000);
}

std::vector<std::string> train_args(const fs::path& data, const fs::path& run, int epochs) {
  return {"cifar10", "--data", data.string(), "--out", run.string(), "--epochs", std::to_string(epochs),
          "--batch-size", "16", "--threads", "1", "--tmax", "4", "--seed", "3"};
}

const bool have_self = have_path("/proc/self/exe");

}  // namespace

TEST_CASE("kill: ./train killed 10 times, during steps and during checkpoint writes, always resumes" *
          skip_unless(have_self, "kill test: needs /proc/self/exe")) {
  const fs::path root = fresh_temp_dir("kill_random");
  const fs::path data = make_cifar(root / "cifar", 4, 8), run = root / "run", log = root / "log.txt";
  const int epochs = 3;  // 20 training images: 1 step of 16 an epoch (the last batch dropped)
  engine::Rng rng(11);
  int64_t last_epoch = -1;
  int kills_in_write = 0, kills = 0;
  // Until 10 kills have landed (a run that finishes first, on a fast or a slow machine, starts over).
  for (int attempt = 0; kills < 10 && attempt < 40; attempt++) {
    const int k = kills;
    const bool resume = fs::exists(run / "last.safetensors");
    Child c(resume ? std::vector<std::string>{"--resume", run.string()} : train_args(data, run, epochs), log);
    // Kill k % 3 == 0 after a random 50-800 ms (loading, a step); 1 while a checkpoint is being written;
    // 2 at a random 0-300 ms after last.safetensors was written once (so that the run gets on).
    const auto start = std::chrono::steady_clock::now();
    auto after = [&](int ms) { return std::chrono::steady_clock::now() > start + std::chrono::milliseconds(ms); };
    const int kind = k % 3, delay = kind == 0 ? 50 + int(rng.below(750)) : int(rng.below(300));
    bool in_write = false, saw_last = false;
    int64_t written_at = -1;  // ms after start
    while (c.running() && !after(60000)) {
      if (kind == 0 && after(delay)) break;
      if (kind == 1 && (in_write = writing(run, c.pid))) break;
      if (kind == 2 && written_at < 0) {
        const bool now = writing(run, c.pid, "last.");
        if (saw_last && !now)
          written_at = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start).count();
        saw_last |= now;
      }
      if (kind == 2 && written_at >= 0 && after(int(written_at) + delay)) break;
      std::this_thread::sleep_for(std::chrono::microseconds(500));  // a checkpoint write takes longer
    }
    const int rc = c.running() ? c.kill() : c.wait();
    INFO("kill " << k << ": " << slurp(log));
    if (rc == 0) {  // finished before the kill: a new run
      fs::remove_all(run);
      last_epoch = -1;
      continue;
    }
    REQUIRE(rc == 128 + SIGKILL);
    kills++;
    kills_in_write += in_write;
    if (fs::exists(run / "last.safetensors")) {
      const int64_t e = loadable_epoch(run / "last.safetensors");
      CHECK(e >= last_epoch);
      last_epoch = e;
    }
  }
  CHECK(kills == 10);
  CHECK(kills_in_write >= 3);
  // The last resume runs to the end: every epoch in log.csv once, the last checkpoint at the last epoch.
  const bool resume = fs::exists(run / "last.safetensors");
  Child c(resume ? std::vector<std::string>{"--resume", run.string()} : train_args(data, run, epochs), log);
  INFO(slurp(log));
  REQUIRE(c.wait() == 0);
  CHECK(loadable_epoch(run / "last.safetensors") == epochs);
  std::ifstream in(run / "log.csv");
  std::string line;
  int rows = -1;
  while (std::getline(in, line)) rows++;
  CHECK(rows == epochs);
  fs::remove_all(root);
}

TEST_CASE("kill: a checkpoint write that fails (a file size limit, as a full disk) names the file and keeps the last one" *
          skip_unless(have_self, "kill test: needs /proc/self/exe")) {
  const fs::path root = fresh_temp_dir("kill_full");
  const fs::path data = make_cifar(root / "cifar", 4, 8), run = root / "run", log = root / "log.txt";
  {
    Child c(train_args(data, run, 1), log);
    INFO(slurp(log));
    REQUIRE(c.wait() == 0);
  }
  const std::string last = slurp(run / "last.safetensors"), best = slurp(run / "best.safetensors");
  REQUIRE(last.size() > 1 << 20);
  // Resumed for a second epoch with files capped at 64 KB: log.csv fits, the checkpoint does not.
  Child c({"--resume", run.string(), "--epochs", "2"}, log, 1 << 16);
  const int rc = c.wait();
  const std::string out = slurp(log);
  INFO(out);
  CHECK(rc == 2);
  // best.safetensors when epoch 2 is better, else last.safetensors: the first write of a checkpoint fails.
  CHECK(out.find("train: file " + run.string() + "/") != std::string::npos);
  CHECK(out.find(".safetensors: write failed (write " + run.string() + "/") != std::string::npos);
  CHECK(out.find("File too large") != std::string::npos);
  CHECK(slurp(run / "last.safetensors") == last);
  CHECK(slurp(run / "best.safetensors") == best);
  CHECK(loadable_epoch(run / "last.safetensors") == 1);
  CHECK(!writing(run, c.pid));  // the temporary file removed
  fs::remove_all(root);
}
