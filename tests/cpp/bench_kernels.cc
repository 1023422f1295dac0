// Microbenchmark of the three linear-layer passes on one shape, no Python:
// forward SpMM, input-gradient SpMM (transposed pattern) and weight-gradient
// SDDMM, each as useful GFLOP/s (2 * nnz * batch per pass), median of reps.
//   bench_kernels ROWS COLS SPARSITY BATCH [THREADS] [ISA] [REPS]
// Timings on a shared machine are noisy: compare variants in one sitting.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "csr.h"
#include "dispatch.h"
#include "linear_ops.h"

using namespace sparseprop;

namespace {

template <class F>
double median_seconds(int reps, const F& f) {
  f();  // warm-up: caches, scratch buffers, thread start
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    const auto s = std::chrono::steady_clock::now();
    f();
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - s).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 5) {
    std::fprintf(stderr, "usage: %s ROWS COLS SPARSITY BATCH [THREADS] [ISA] [REPS]\n", argv[0]);
    return 2;
  }
  const int64_t rows = std::atoll(argv[1]), cols = std::atoll(argv[2]);
  const double sparsity = std::atof(argv[3]);
  const int64_t n = std::atoll(argv[4]);
  const int threads = argc > 5 ? std::atoi(argv[5]) : 1;
  if (argc > 6) set_isa(argv[6]);
  const int reps = argc > 7 ? std::atoi(argv[7]) : 21;

  std::mt19937 rng(7);
  std::bernoulli_distribution keep(1.0 - sparsity);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<int64_t> indptr{0};
  std::vector<int32_t> indices;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c)
      if (keep(rng)) indices.push_back(int32_t(c));
    indptr.push_back(int64_t(indices.size()));
  }
  const int64_t nnz = int64_t(indices.size());
  std::vector<float> values(static_cast<size_t>(nnz)), x(static_cast<size_t>(cols * n)), dy(static_cast<size_t>(rows * n));
  for (float& v : values) v = u(rng);
  for (float& v : x) v = u(rng);
  for (float& v : dy) v = u(rng);
  std::vector<float> y(static_cast<size_t>(rows * n)), dx(static_cast<size_t>(cols * n)), dw(static_cast<size_t>(nnz));
  std::vector<int64_t> t_indptr(static_cast<size_t>(cols + 1)), perm(static_cast<size_t>(nnz));
  std::vector<int32_t> t_indices(static_cast<size_t>(nnz));
  transpose_csr(indptr.data(), rows, indices.data(), cols, t_indptr.data(), t_indices.data(),
                perm.data());

  const SpmmArgs fwd{indptr.data(), indices.data(), values.data(), nullptr, nullptr,
                     x.data(), n, y.data(), n, n};
  const SpmmArgs bwd{t_indptr.data(), t_indices.data(), values.data(), perm.data(), nullptr,
                     dy.data(), n, dx.data(), n, n};
  const SddmmArgs wgrad{indptr.data(), indices.data(), dy.data(), n, x.data(), n, dw.data(), n};
  const double flop = 2.0 * double(nnz) * double(n);
  const double t_fwd = median_seconds(reps, [&] { spmm(fwd, rows, threads); });
  const double t_bwd = median_seconds(reps, [&] { spmm(bwd, cols, threads); });
  const double t_scatter = n == 1 ? median_seconds(reps, [&] {
    spmv_transposed(indptr.data(), indices.data(), values.data(), rows, cols, dy.data(), dx.data(),
                    threads);
  }) : 0.0;
  const double t_dw = median_seconds(reps, [&] { sddmm(wgrad, rows, threads); });
  std::printf("%s %lldx%lld sparsity %.3f batch %lld threads %d nnz %lld\n",
              active_kernels().isa, (long long)rows, (long long)cols, sparsity, (long long)n,
              threads, (long long)nnz);
  std::printf("  forward  %8.3f ms %7.1f GFLOP/s\n", t_fwd * 1e3, flop / t_fwd * 1e-9);
  std::printf("  grad x   %8.3f ms %7.1f GFLOP/s\n", t_bwd * 1e3, flop / t_bwd * 1e-9);
  if (n == 1) std::printf("  grad x scatter %8.3f ms %7.1f GFLOP/s\n", t_scatter * 1e3, flop / t_scatter * 1e-9);
  std::printf("  grad w   %8.3f ms %7.1f GFLOP/s\n", t_dw * 1e3, flop / t_dw * 1e-9);
  return 0;
}
