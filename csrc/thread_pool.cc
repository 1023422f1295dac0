#include "thread_pool.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

#include <unistd.h>

namespace sparseprop {
namespace {

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ volatile("yield");
#endif
}

// How long an idle worker keeps polling before it sleeps.
constexpr auto kSpin = std::chrono::microseconds(100);

class Pool {
 public:
  void run(int n, TaskFn fn, void* ctx) {
    std::lock_guard<std::mutex> serial(run_mutex_);
    grow(n - 1);
    fn_ = fn;
    ctx_ = ctx;
    num_threads_ = n;
    // Every worker acknowledges every job, even those with nothing to do, so
    // no worker can still be reading this job's fields when the next begins.
    pending_.store(int(threads_.size()), std::memory_order_relaxed);
    {
      std::lock_guard<std::mutex> lk(wake_mutex_);
      generation_.fetch_add(1, std::memory_order_release);
    }
    wake_.notify_all();
    fn(ctx, 0, n);
    while (pending_.load(std::memory_order_acquire) != 0) cpu_relax();
  }

  // Threads are never joined: the pool lives until the process exits.
  ~Pool() = delete;

 private:
  void grow(int workers) {
    while (int(threads_.size()) < workers) {
      const int id = int(threads_.size()) + 1;
      // The worker must start from the generation before the job being set up,
      // or it could miss that job if it starts after the wake-up.
      const uint64_t start = generation_.load(std::memory_order_relaxed);
      threads_.emplace_back([this, id, start] { loop(id, start); });
      threads_.back().detach();
    }
  }

  void loop(int id, uint64_t seen) {
    for (;;) {
      const auto spin_until = std::chrono::steady_clock::now() + kSpin;
      uint64_t gen;
      while ((gen = generation_.load(std::memory_order_acquire)) == seen &&
             std::chrono::steady_clock::now() < spin_until)
        cpu_relax();
      if (gen == seen) {
        std::unique_lock<std::mutex> lk(wake_mutex_);
        wake_.wait(lk, [&] { return generation_.load(std::memory_order_acquire) != seen; });
        gen = generation_.load(std::memory_order_acquire);
      }
      seen = gen;
      if (id < num_threads_) fn_(ctx_, id, num_threads_);
      pending_.fetch_sub(1, std::memory_order_acq_rel);
    }
  }

  std::mutex run_mutex_;
  std::mutex wake_mutex_;
  std::condition_variable wake_;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  TaskFn fn_ = nullptr;
  void* ctx_ = nullptr;
  int num_threads_ = 1;
  std::vector<std::thread> threads_;
};

// A forked child inherits no threads: it gets a fresh pool (the parent's is leaked).
Pool* pool_for_this_process() {
  static Pool* pool = nullptr;
  static pid_t owner = 0;
  static std::mutex m;
  std::lock_guard<std::mutex> lk(m);
  if (!pool || owner != getpid()) {
    pool = new Pool();
    owner = getpid();
  }
  return pool;
}

// libgomp's ABI (stable since GCC 4.9): the body runs once on every team thread.
using GompParallelFn = void (*)(void (*)(void*), void*, unsigned, unsigned);
using OmpIntFn = int (*)();

struct OpenMpRuntime {
  GompParallelFn parallel = nullptr;
  OmpIntFn thread_num = nullptr;
  OmpIntFn num_threads = nullptr;
  pid_t owner = 0;  // libgomp's team threads do not survive fork(): children use the pool
};
std::atomic<const OpenMpRuntime*> openmp{nullptr};

struct OpenMpJob {
  TaskFn fn;
  void* ctx;
  int n;
  const OpenMpRuntime* rt;
};

void openmp_body(void* p) {
  auto* job = static_cast<OpenMpJob*>(p);
  // The runtime may give us a smaller team than asked: stride over the task ids.
  const int team = job->rt->num_threads();
  for (int t = job->rt->thread_num(); t < job->n; t += team) job->fn(job->ctx, t, job->n);
}

}  // namespace

void use_openmp_runtime(void* gomp_parallel, void* omp_get_thread_num, void* omp_get_num_threads) {
  if (!gomp_parallel || !omp_get_thread_num || !omp_get_num_threads) {
    openmp.store(nullptr);
    return;
  }
  // Leaked on purpose: a job on another thread may still be reading the old one.
  auto* rt = new OpenMpRuntime{reinterpret_cast<GompParallelFn>(gomp_parallel),
                               reinterpret_cast<OmpIntFn>(omp_get_thread_num),
                               reinterpret_cast<OmpIntFn>(omp_get_num_threads), getpid()};
  openmp.store(rt);
}

bool using_openmp_runtime() { return openmp.load() != nullptr; }

int max_threads() {
  // Asked once: hardware_concurrency() reads /sys on every call (~5 us), which
  // would double the cost of a small layer's kernel call.
  static const int n = [] {
    const unsigned hw = std::thread::hardware_concurrency();
    return hw ? int(hw) : 1;
  }();
  return n;
}

void parallel_run(int num_threads, TaskFn fn, void* ctx) {
  if (num_threads <= 1) {
    fn(ctx, 0, 1);
    return;
  }
  const OpenMpRuntime* rt = openmp.load();
  if (rt && rt->owner == getpid()) {
    OpenMpJob job{fn, ctx, num_threads, rt};
    rt->parallel(openmp_body, &job, unsigned(num_threads), 0);
    return;
  }
  pool_for_this_process()->run(num_threads, fn, ctx);
}

}  // namespace sparseprop
