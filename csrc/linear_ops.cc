#include "linear_ops.h"

#include <algorithm>
#include <vector>

#include "csr.h"
#include "dispatch.h"
#include "thread_pool.h"

namespace sparseprop {
namespace {

// Below this many multiply-adds (or copied floats) per thread, a second thread
// costs more than it saves.
constexpr int64_t kMinWorkPerThread = 1 << 15;

int threads_for(int64_t work, int64_t max_parts, int requested) {
  const int64_t useful = std::max<int64_t>(1, work / kMinWorkPerThread);
  return int(std::min<int64_t>({int64_t(std::max(requested, 1)), useful, int64_t(max_threads()),
                                std::max<int64_t>(max_parts, 1)}));
}

// Runs body(begin, end) over [0, n) split at bounds (n_threads + 1 entries).
template <class Body>
void run_split(const std::vector<int64_t>& bounds, const Body& body) {
  const int n = int(bounds.size()) - 1;
  if (n == 1) {
    body(bounds[0], bounds[1]);
    return;
  }
  struct Ctx {
    const std::vector<int64_t>* bounds;
    const Body* body;
  } ctx{&bounds, &body};
  parallel_run(n, [](void* p, int t, int) {
    auto* c = static_cast<Ctx*>(p);
    const int64_t b = (*c->bounds)[t], e = (*c->bounds)[t + 1];
    if (b < e) (*c->body)(b, e);
  }, &ctx);
}

// Per-thread scratch buffers that only grow: a fresh large allocation costs a
// page fault per 4 KiB on first touch, often more than the work done in it.
float* scratch(int64_t count, int slot) {
  thread_local std::vector<float> buffers[2];
  std::vector<float>& b = buffers[slot];
  if (int64_t(b.size()) < count) b.resize(size_t(count));
  return b.data();
}

std::vector<int64_t> even_split(int64_t n, int parts) {
  std::vector<int64_t> bounds(size_t(parts) + 1);
  for (int p = 0; p <= parts; ++p) bounds[p] = n * p / parts;
  return bounds;
}

std::vector<int64_t> nnz_split(const int64_t* indptr, int64_t rows, int parts) {
  std::vector<int64_t> bounds(size_t(parts) + 1);
  balance_rows(indptr, rows, parts, bounds.data());
  return bounds;
}

int row_threads(const int64_t* indptr, int64_t rows, int64_t n, int64_t segments, int requested) {
  return threads_for((indptr[rows] + rows) * std::max<int64_t>(n * segments, 1), rows, requested);
}

}  // namespace

void spmm(const SpmmArgs& args, int64_t rows, int num_threads) {
  const int n = row_threads(args.indptr, rows, args.n, args.segments, num_threads);
  SpmmArgs a = args;
  if (args.perm) {
    const int64_t nnz = args.indptr[rows];
    float* out = scratch(nnz, 0);
    run_split(even_split(nnz, threads_for(nnz, nnz, num_threads)), [&](int64_t b, int64_t e) {
      for (int64_t k = b; k < e; ++k) out[k] = args.values[args.perm[k]];
    });
    a.values = out;
    a.perm = nullptr;
  }
  const SpmmRowsFn kernel = active_kernels().spmm;
  run_split(nnz_split(a.indptr, rows, n), [&](int64_t b, int64_t e) { kernel(a, b, e); });
}

void sddmm(const SddmmArgs& args, int64_t rows, int num_threads) {
  const int n = row_threads(args.indptr, rows, args.n, args.segments, num_threads);
  const SddmmRowsFn kernel = active_kernels().sddmm;
  run_split(nnz_split(args.indptr, rows, n), [&](int64_t b, int64_t e) { kernel(args, b, e); });
}

void spmv_transposed(const int64_t* indptr, const int32_t* indices, const float* values,
                     int64_t rows, int64_t cols, const float* x, float* y, int num_threads) {
  const int n = threads_for(indptr[rows], rows, num_threads);
  const std::vector<int64_t> bounds = nnz_split(indptr, rows, n);
  // Thread 0 scatters into y; the others into private copies, summed at the end.
  float* partial = n > 1 ? scratch(int64_t(n - 1) * cols, 0) : nullptr;
  std::vector<float*> outs(size_t(n), y);
  for (int t = 1; t < n; ++t) outs[size_t(t)] = partial + int64_t(t - 1) * cols;
  struct Ctx {
    const std::vector<int64_t>* bounds;
    float* const* outs;
    const int64_t* indptr;
    const int32_t* indices;
    const float* values;
    const float* x;
    int64_t cols;
  } ctx{&bounds, outs.data(), indptr, indices, values, x, cols};
  parallel_run(n, [](void* p, int t, int) {
    const auto* c = static_cast<const Ctx*>(p);
    float* out = c->outs[t];
    std::fill(out, out + c->cols, 0.0f);
    for (int64_t r = (*c->bounds)[t]; r < (*c->bounds)[t + 1]; ++r) {
      const float d = c->x[r];
      for (int64_t k = c->indptr[r]; k < c->indptr[r + 1]; ++k) out[c->indices[k]] += c->values[k] * d;
    }
  }, &ctx);
  for (int t = 1; t < n; ++t) {
    const float* part = outs[size_t(t)];
    for (int64_t j = 0; j < cols; ++j) y[j] += part[j];
  }
}

void transpose(const TransposeArgs& args, int num_threads) {
  const int n = threads_for(args.rows * args.cols, args.cols, num_threads);
  const auto kernel = active_kernels().transpose;
  run_split(even_split(args.cols, n), [&](int64_t b, int64_t e) { kernel(args, b, e); });
}

// Both image layout changes go one channel at a time through a per-thread
// buffer of h*w*n floats (small enough for L2): one cache-blocked transpose
// between the channel's (n, h*w) slab and the buffer, and copies of n-float
// pixels (whole rows when the stride is 1) between the buffer and the phases.
void to_phase_layout(const float* src, int64_t n, int64_t c, int64_t h, int64_t w, int64_t sh,
                     int64_t sw, int64_t top, int64_t left, int64_t hs, int64_t ws, float* dst,
                     int num_threads) {
  const int64_t hw = h * w, phase = hs * ws * n;
  if (sh == 1 && sw == 1 && top == 0 && left == 0 && hs == h && ws == w) {
    transpose(TransposeArgs{src, n, c * hw, c * hw, dst, n}, num_threads);  // no border
    return;
  }
  const auto kernel = active_kernels().transpose;
  const int threads = threads_for(c * sh * sw * phase, c, num_threads);
  run_split(even_split(c, threads), [&](int64_t c0, int64_t c1) {
    float* packed = scratch(hw * n, 1);
    for (int64_t ch = c0; ch < c1; ++ch) {
      kernel(TransposeArgs{src + ch * hw, n, hw, c * hw, packed, n}, 0, hw);
      float* phases = dst + ch * sh * sw * phase;
      std::fill(phases, phases + sh * sw * phase, 0.0f);
      for (int64_t i = 0; i < h; ++i) {
        const int64_t pi = i + top;
        float* row = phases + (pi % sh) * sw * phase + (pi / sh) * ws * n;
        if (sw == 1) {
          std::copy_n(packed + i * w * n, w * n, row + left * n);
          continue;
        }
        for (int64_t j = 0; j < w; ++j) {
          const int64_t pj = j + left;
          std::copy_n(packed + (i * w + j) * n, n, row + (pj % sw) * phase + (pj / sw) * n);
        }
      }
    }
  });
}

void from_phase_layout(const float* src, int64_t sh, int64_t sw, int64_t top, int64_t left,
                       int64_t hs, int64_t ws, float* dst, int64_t n, int64_t c, int64_t h,
                       int64_t w, int num_threads) {
  const int64_t hw = h * w, phase = hs * ws * n;
  if (sh == 1 && sw == 1 && top == 0 && left == 0 && hs == h && ws == w) {
    transpose(TransposeArgs{src, c * hw, n, n, dst, c * hw}, num_threads);  // no border
    return;
  }
  const auto kernel = active_kernels().transpose;
  const int threads = threads_for(c * hw * n, c, num_threads);
  run_split(even_split(c, threads), [&](int64_t c0, int64_t c1) {
    float* packed = scratch(hw * n, 1);
    for (int64_t ch = c0; ch < c1; ++ch) {
      const float* phases = src + ch * sh * sw * phase;
      for (int64_t i = 0; i < h; ++i) {
        const int64_t pi = i + top;
        const float* row = phases + (pi % sh) * sw * phase + (pi / sh) * ws * n;
        if (sw == 1) {
          std::copy_n(row + left * n, w * n, packed + i * w * n);
          continue;
        }
        for (int64_t j = 0; j < w; ++j) {
          const int64_t pj = j + left;
          std::copy_n(row + (pj % sw) * phase + (pj / sw) * n, n, packed + (i * w + j) * n);
        }
      }
      kernel(TransposeArgs{packed, hw, n, n, dst + ch * hw, c * hw}, 0, n);
    }
  });
}

namespace {

// ceil(a / b) for b > 0 and any sign of a.
int64_t ceil_div(int64_t a, int64_t b) { return a >= 0 ? (a + b - 1) / b : -((-a) / b); }

// Destination columns [c0, c1) of a stride-1 row copy come from source columns
// [c0 - left, c1 - left); the rest are zeros.
void shifted_row(const float* src, int64_t src_w, float* dst, int64_t dst_w, int64_t left) {
  const int64_t c0 = std::clamp<int64_t>(left, 0, dst_w);
  const int64_t c1 = std::clamp<int64_t>(left + src_w, c0, dst_w);
  std::fill(dst, dst + c0, 0.0f);
  std::copy(src + c0 - left, src + c1 - left, dst + c0);
  std::fill(dst + c1, dst + dst_w, 0.0f);
}

}  // namespace

void split_phases(const float* src, int64_t planes, int64_t h, int64_t w, int64_t sh, int64_t sw,
                  int64_t top, int64_t left, float* dst, int64_t hs, int64_t ws, int num_threads) {
  const int threads = threads_for(planes * sh * sw * hs * ws, planes, num_threads);
  run_split(even_split(planes, threads), [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const float* s = src + p * h * w;
      float* d = dst + p * sh * sw * hs * ws;
      for (int64_t a = 0; a < sh; ++a)
        for (int64_t b = 0; b < sw; ++b)
          for (int64_t i = 0; i < hs; ++i, d += ws) {
            const int64_t y = i * sh + a - top;
            if (y < 0 || y >= h) {
              std::fill(d, d + ws, 0.0f);
            } else if (sw == 1) {
              shifted_row(s + y * w, w, d, ws, left);
            } else {
              // Phase column j holds image column j*sw + b - left: those in [0, w) are
              // the columns j in [j0, j1), a stride-sw gather; the rest are zeros.
              const int64_t j0 = std::clamp<int64_t>(ceil_div(left - b, sw), 0, ws);
              const int64_t j1 = std::clamp<int64_t>(ceil_div(w + left - b, sw), j0, ws);
              const float* from = s + y * w + j0 * sw + b - left;
              std::fill(d, d + j0, 0.0f);
              for (int64_t j = j0; j < j1; ++j) d[j] = from[(j - j0) * sw];
              std::fill(d + j1, d + ws, 0.0f);
            }
          }
    }
  });
}

void merge_phases(const float* src, int64_t planes, int64_t sh, int64_t sw, int64_t hs, int64_t ws,
                  int64_t top, int64_t left, float* dst, int64_t h, int64_t w, int num_threads) {
  const int threads = threads_for(planes * h * w, planes, num_threads);
  run_split(even_split(planes, threads), [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const float* s = src + p * sh * sw * hs * ws;
      float* d = dst + p * h * w;
      for (int64_t y = 0; y < h; ++y, d += w) {
        const int64_t py = y + top;
        const float* row = s + (py % sh) * sw * hs * ws + (py / sh) * ws;
        if (sw == 1) {
          std::copy(row + left, row + left + w, d);
          continue;
        }
        // Image columns x = x0, x0 + sw, ... come from phase b = (x0 + left) % sw, at
        // consecutive phase columns: a stride-sw scatter per phase.
        for (int64_t x0 = 0; x0 < std::min(sw, w); ++x0) {
          const int64_t px = x0 + left;
          const float* from = row + (px % sw) * hs * ws + px / sw;
          for (int64_t x = x0, j = 0; x < w; x += sw, ++j) d[x] = from[j];
        }
      }
    }
  });
}

}  // namespace sparseprop
