#include "linear_ops.h"

#include <algorithm>
#include <vector>

#include "csr.h"
#include "dispatch.h"
#include "thread_pool.h"

namespace sparseprop {
namespace {

// Below this many multiply-adds a second thread costs more than it saves.
constexpr int64_t kMinWorkPerThread = 1 << 15;

int threads_for(const int64_t* indptr, int64_t rows, int64_t n, int requested) {
  const int64_t work = (indptr[rows] + rows) * std::max<int64_t>(n, 1);
  const int64_t useful = std::max<int64_t>(1, work / kMinWorkPerThread);
  return int(std::min<int64_t>({int64_t(std::max(requested, 1)), useful, int64_t(max_threads()),
                                std::max<int64_t>(rows, 1)}));
}

template <class Args, class Fn>
struct Job {
  const Args* args;
  Fn kernel;
  const int64_t* bounds;
  static void run(void* ctx, int t, int) {
    auto* job = static_cast<Job*>(ctx);
    if (job->bounds[t] < job->bounds[t + 1]) job->kernel(*job->args, job->bounds[t], job->bounds[t + 1]);
  }
};

template <class Args, class Fn>
void run_rows(const Args& args, Fn kernel, int64_t rows, int num_threads) {
  const int n = threads_for(args.indptr, rows, args.n, num_threads);
  if (n == 1) {
    kernel(args, 0, rows);
    return;
  }
  std::vector<int64_t> bounds(size_t(n) + 1);
  balance_rows(args.indptr, rows, n, bounds.data());
  Job<Args, Fn> job{&args, kernel, bounds.data()};
  parallel_run(n, &Job<Args, Fn>::run, &job);
}

}  // namespace

void spmm(const SpmmArgs& args, int64_t rows, int num_threads) {
  run_rows(args, active_kernels().spmm, rows, num_threads);
}

void sddmm(const SddmmArgs& args, int64_t rows, int num_threads) {
  run_rows(args, active_kernels().sddmm, rows, num_threads);
}

}  // namespace sparseprop
