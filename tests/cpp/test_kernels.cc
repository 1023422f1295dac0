// Every kernel of every ISA this CPU runs, against naive loops, on a seeded grid
// of shapes, sparsities and batch tails. No Python: runs under qemu for NEON.
// Exit status is the number of failing cases (0 = all passed).
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "csr.h"
#include "dispatch.h"
#include "linear_ops.h"

using namespace sparseprop;

namespace {

struct Pattern {
  int64_t rows, cols;
  std::vector<int64_t> indptr;
  std::vector<int32_t> indices;
  std::vector<float> values;
};

Pattern random_pattern(int64_t rows, int64_t cols, double density, std::mt19937& rng) {
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::bernoulli_distribution keep(density);
  Pattern p{rows, cols, {0}, {}, {}};
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c)
      if (keep(rng)) {
        p.indices.push_back(int32_t(c));
        p.values.push_back(u(rng));
      }
    p.indptr.push_back(int64_t(p.indices.size()));
  }
  return p;
}

std::vector<float> random_vector(size_t n, std::mt19937& rng) {
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = u(rng);
  return v;
}

int failures = 0;

void expect_close(const std::vector<float>& got, const std::vector<double>& want, double scale,
                  const std::string& what) {
  for (size_t i = 0; i < want.size(); ++i) {
    if (std::fabs(got[i] - want[i]) > 1e-5 * scale + 1e-5 * std::fabs(want[i])) {
      std::printf("FAIL %s at %zu: got %g want %g\n", what.c_str(), i, got[i], want[i]);
      ++failures;
      return;
    }
  }
}

void run_case(const std::string& isa, int64_t rows, int64_t cols, double density, int64_t n,
              int threads, std::mt19937& rng) {
  const Pattern p = random_pattern(rows, cols, density, rng);
  const std::string what = isa + " rows=" + std::to_string(rows) + " cols=" + std::to_string(cols) +
                           " density=" + std::to_string(density) + " n=" + std::to_string(n) +
                           " threads=" + std::to_string(threads);
  if (!check_csr(p.indptr.data(), rows, p.indices.data(), int64_t(p.indices.size()), cols).empty()) {
    std::printf("FAIL %s: generated pattern rejected\n", what.c_str());
    ++failures;
    return;
  }
  const std::vector<float> x = random_vector(size_t(cols * n), rng);   // (cols, n)
  const std::vector<float> dy = random_vector(size_t(rows * n), rng);  // (rows, n)
  const std::vector<float> bias = random_vector(size_t(rows), rng);

  // Forward: y = W x + bias.
  std::vector<double> y_ref(size_t(rows * n));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < n; ++j) {
      double s = bias[r];
      for (int64_t k = p.indptr[r]; k < p.indptr[r + 1]; ++k) s += double(p.values[k]) * x[p.indices[k] * n + j];
      y_ref[r * n + j] = s;
    }
  std::vector<float> y(size_t(rows * n), NAN);
  SpmmArgs fa{p.indptr.data(), p.indices.data(), p.values.data(), nullptr, bias.data(), x.data(), n,
              y.data(), n, n};
  spmm(fa, rows, threads);
  expect_close(y, y_ref, double(cols), "spmm " + what);

  // Input gradient through the transposed pattern: dx = W^T dy.
  std::vector<int64_t> t_indptr(size_t(cols + 1)), perm(p.indices.size());
  std::vector<int32_t> t_indices(p.indices.size());
  transpose_csr(p.indptr.data(), rows, p.indices.data(), cols, t_indptr.data(), t_indices.data(), perm.data());
  std::vector<double> dx_ref(size_t(cols * n), 0.0);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t k = p.indptr[r]; k < p.indptr[r + 1]; ++k)
      for (int64_t j = 0; j < n; ++j) dx_ref[p.indices[k] * n + j] += double(p.values[k]) * dy[r * n + j];
  std::vector<float> dx(size_t(cols * n), NAN);
  SpmmArgs ba{t_indptr.data(), t_indices.data(), p.values.data(), perm.data(), nullptr, dy.data(), n,
              dx.data(), n, n};
  spmm(ba, cols, threads);
  expect_close(dx, dx_ref, double(rows), "spmm^T " + what);
  if (n == 1) {  // the batch-1 scatter form on W's own rows
    std::vector<float> dx1(size_t(cols), NAN);
    spmv_transposed(p.indptr.data(), p.indices.data(), p.values.data(), rows, cols, dy.data(),
                    dx1.data(), threads);
    expect_close(dx1, dx_ref, double(rows), "spmv_transposed " + what);
  }

  // Value gradient: dv[k] = dot(dy[r, :], x[c, :]).
  std::vector<double> dv_ref(p.indices.size());
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t k = p.indptr[r]; k < p.indptr[r + 1]; ++k) {
      double s = 0.0;
      for (int64_t j = 0; j < n; ++j) s += double(dy[r * n + j]) * x[p.indices[k] * n + j];
      dv_ref[k] = s;
    }
  std::vector<float> dv(p.indices.size(), NAN);
  SddmmArgs sa{p.indptr.data(), p.indices.data(), dy.data(), n, x.data(), n, dv.data(), n};
  sddmm(sa, rows, threads);
  expect_close(dv, dv_ref, double(n), "sddmm " + what);

  // Transpose of x.
  std::vector<float> xt(size_t(cols * n), NAN);
  TransposeArgs ta{x.data(), cols, n, n, xt.data(), cols};
  transpose(ta, threads);
  std::vector<double> xt_ref(xt.size());
  for (int64_t i = 0; i < cols; ++i)
    for (int64_t j = 0; j < n; ++j) xt_ref[j * cols + i] = x[i * n + j];
  expect_close(xt, xt_ref, 1.0, "transpose " + what);
}

// The offset form used by convolutions: operand of nonzero k at x + offsets[k],
// repeated over segments with their own strides.
void run_offsets_case(const std::string& isa, int64_t rows, int64_t nnz_per_row, int64_t n,
                      int64_t segments, int threads, std::mt19937& rng) {
  const int64_t xs = n + 3, ys = n + 1, x_size = 200 + segments * xs + n;
  std::uniform_int_distribution<int64_t> pick(0, 200);
  std::vector<int64_t> indptr{0}, offsets;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t j = 0; j < nnz_per_row; ++j) offsets.push_back(pick(rng));
    indptr.push_back(int64_t(offsets.size()));
  }
  const int64_t nnz = int64_t(offsets.size());
  const std::vector<float> values = random_vector(size_t(nnz), rng);
  const std::vector<float> x = random_vector(size_t(x_size), rng);
  const int64_t ldy = (segments - 1) * ys + n + 2;
  const std::vector<float> dy = random_vector(size_t(rows * ldy), rng);
  const std::string what = isa + " offsets rows=" + std::to_string(rows) + " n=" + std::to_string(n) +
                           " segments=" + std::to_string(segments);

  std::vector<double> y_ref(size_t(rows * ldy), 0.0), dv_ref(size_t(nnz), 0.0);
  std::vector<float> y(size_t(rows * ldy), 0.0f), dv(size_t(nnz), NAN);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t s = 0; s < segments; ++s)
      for (int64_t t = 0; t < n; ++t) {
        double acc = 0.0;
        for (int64_t k = indptr[r]; k < indptr[r + 1]; ++k) {
          acc += double(values[k]) * x[offsets[k] + s * xs + t];
          dv_ref[k] += double(dy[r * ldy + s * ys + t]) * x[offsets[k] + s * xs + t];
        }
        y_ref[r * ldy + s * ys + t] = acc;
      }
  SpmmArgs fa{indptr.data(), nullptr, values.data(), nullptr, nullptr, x.data(), 0, y.data(), ldy, n};
  fa.offsets = offsets.data();
  fa.segments = segments;
  fa.x_segment_stride = xs;
  fa.y_segment_stride = ys;
  spmm(fa, rows, threads);
  expect_close(y, y_ref, double(nnz_per_row), "spmm " + what);
  SddmmArgs sa{indptr.data(), nullptr, dy.data(), ldy, x.data(), 0, dv.data(), n};
  sa.offsets = offsets.data();
  sa.segments = segments;
  sa.x_segment_stride = xs;
  sa.dy_segment_stride = ys;
  sddmm(sa, rows, threads);
  expect_close(dv, dv_ref, double(n * segments), "sddmm " + what);
}

// The checksum must see every kind of edit a valid pattern can undergo: a changed
// index, a nonzero moved to another row (indptr), two entries swapped, and the
// same words split differently between indptr and indices.
void run_checksum_case(std::mt19937& rng) {
  const Pattern p = random_pattern(40, 70, 0.2, rng);
  const int64_t n_indptr = int64_t(p.indptr.size()), nnz = int64_t(p.indices.size());
  auto sum = [&](const std::vector<int64_t>& ip, const std::vector<int32_t>& ix) {
    return pattern_checksum(ip.data(), int64_t(ip.size()), ix.data(), int64_t(ix.size()));
  };
  const uint64_t base = sum(p.indptr, p.indices);
  int misses = 0;
  if (sum(p.indptr, p.indices) != base) ++misses;  // deterministic
  for (int64_t k = 0; k < nnz; ++k) {
    std::vector<int32_t> changed = p.indices;
    changed[k] += 1;
    misses += sum(p.indptr, changed) == base;
    if (k + 1 < nnz && p.indices[k] != p.indices[k + 1]) {
      std::swap(changed[k], changed[k + 1]);
      changed[k + 1] -= 1;  // undo the +1: a pure swap
      misses += sum(p.indptr, changed) == base;
    }
  }
  for (int64_t r = 1; r + 1 < n_indptr; ++r) {
    std::vector<int64_t> moved = p.indptr;
    moved[r] += 1;
    misses += sum(moved, p.indices) == base;
  }
  misses += pattern_checksum(p.indptr.data(), n_indptr - 1, p.indices.data(), nnz) == base;
  if (misses) {
    std::printf("FAIL pattern_checksum: %d edits not noticed\n", misses);
    ++failures;
  }
}

}  // namespace

int main() {
  std::mt19937 rng(1234);
  run_checksum_case(rng);
  const int64_t shapes[][2] = {{1, 1}, {3, 5}, {17, 33}, {64, 48}, {100, 7}, {130, 257}};
  const double densities[] = {1.0, 0.5, 0.1, 0.01, 0.0};
  const int64_t batches[] = {0, 1, 3, 4, 7, 8, 15, 16, 17, 33, 64, 127, 129, 257, 300};
  int cases = 0;
  for (const std::string& isa : available_isas()) {
    set_isa(isa);
    for (const auto& s : shapes)
      for (double d : densities)
        for (int64_t n : batches) {
          run_case(isa, s[0], s[1], d, n, 1 + (cases % 2), rng);
          ++cases;
        }
    // Large enough for two threads at batch 1 (the batch-1 forms split by nonzeros).
    run_case(isa, 300, 500, 0.5, 1, 2, rng);
    run_case(isa, 301, 499, 0.9, 1, 2, rng);
    cases += 2;
    for (int64_t n : {1, 5, 16, 31, 130})
      for (int64_t segments : {1, 3})
        run_offsets_case(isa, 7, 4, n, segments, 1 + (cases++ % 2), rng);
    std::printf("%-7s ok so far: %d cases, %d failures\n", isa.c_str(), cases, failures);
  }
  return failures == 0 ? 0 : 1;
}
