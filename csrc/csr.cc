#include "csr.h"

#include <algorithm>
#include <vector>

#include "thread_pool.h"

namespace sparseprop {

std::string check_csr(const int64_t* indptr, int64_t rows, const int32_t* indices, int64_t nnz,
                      int64_t cols) {
  auto at = [](const char* what, int64_t i) { return std::string(what) + "[" + std::to_string(i) + "]"; };
  if (indptr[0] != 0) return "indptr[0] must be 0, got " + std::to_string(indptr[0]);
  for (int64_t r = 0; r < rows; ++r) {
    if (indptr[r + 1] < indptr[r])
      return "indptr must be non-decreasing, but " + at("indptr", r + 1) + " = " +
             std::to_string(indptr[r + 1]) + " < " + at("indptr", r) + " = " +
             std::to_string(indptr[r]);
    if (indptr[r + 1] > nnz)
      return at("indptr", r + 1) + " = " + std::to_string(indptr[r + 1]) +
             " exceeds the number of nonzeros (" + std::to_string(nnz) + ")";
  }
  if (indptr[rows] != nnz)
    return "indptr[-1] = " + std::to_string(indptr[rows]) + " but there are " +
           std::to_string(nnz) + " indices";
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t k = indptr[r]; k < indptr[r + 1]; ++k) {
      const int64_t c = indices[k];
      if (c < 0 || c >= cols)
        return at("indices", k) + " = " + std::to_string(c) + " (row " + std::to_string(r) +
               ") is out of range [0, " + std::to_string(cols) + ")";
      if (k > indptr[r] && c <= indices[k - 1])
        return std::string(c == indices[k - 1] ? "duplicate" : "unsorted") + " column index " +
               std::to_string(c) + " at " + at("indices", k) + " in row " + std::to_string(r) +
               "; indices must strictly increase within a row";
    }
  }
  return "";
}

std::string check_bounds(const int64_t* indptr, int64_t rows, const int32_t* indices, int64_t nnz,
                         int64_t cols) {
  bool monotone = indptr[0] == 0 && indptr[rows] == nnz;
  for (int64_t r = 0; r < rows; ++r) monotone &= indptr[r] <= indptr[r + 1];
  if (!monotone) return "indptr must start at 0, never decrease and end at the number of indices";
  int32_t lo = 0, hi = 0;
  for (int64_t k = 0; k < nnz; ++k) {  // branch-free min/max: vectorizes
    lo = indices[k] < lo ? indices[k] : lo;
    hi = indices[k] > hi ? indices[k] : hi;
  }
  if (lo < 0 || (nnz > 0 && hi >= cols))
    return "indices out of range: they must lie in [0, " + std::to_string(cols) + "), found values in [" +
           std::to_string(lo) + ", " + std::to_string(hi) + "]";
  return "";
}

namespace {

// Fletcher-style sums over independent lanes: lane j of `a` sums the words at
// positions j, j + kLanes, ...; `b` sums the running `a`, so it weighs each word
// by its position and catches moves and swaps, not only changed values. Each
// word is scrambled first (w ^ w << 7, not linear over the integers) so that
// structured edits do not cancel in these linear sums. Plain loops over a fixed
// lane count with the sums in locals: the compiler vectorizes them at the
// baseline ISA (~0.07-0.1 ns per word). W is the unsigned twin of the array's
// element type (aliasing it is allowed).
constexpr int kLanes = 32;

uint64_t mix(uint64_t h) {  // the splitmix64 finalizer
  h ^= h >> 30;
  h *= 0xbf58476d1ce4e5b9ULL;
  h ^= h >> 27;
  h *= 0x94d049bb133111ebULL;
  return h ^ (h >> 31);
}

// Mixes the lane sums of words[0, n) into h.
template <class W>
uint64_t mix_lane_sums(uint64_t h, const W* __restrict words, int64_t n) {
  W a[kLanes], b[kLanes];
  for (int j = 0; j < kLanes; ++j) a[j] = b[j] = 0;
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int j = 0; j < kLanes; ++j) {
      a[j] += words[i + j] ^ (words[i + j] << 7);
      b[j] += a[j];
    }
  }
  for (int j = 0; i < n; ++i, ++j) {
    a[j] += words[i] ^ (words[i] << 7);
    b[j] += a[j];
  }
  // Two polynomial chains over the lanes (short multiply latency), one finalizer.
  uint64_t pa = h, pb = ~h;
  for (int j = 0; j < kLanes; ++j) {
    pa = pa * 0x9e3779b97f4a7c15ULL + uint64_t(a[j]);
    pb = pb * 0xc2b2ae3d27d4eb4fULL + uint64_t(b[j]);
  }
  return mix(pa ^ mix(pb));
}

}  // namespace

uint64_t pattern_checksum(const int64_t* indptr, int64_t n_indptr, const int32_t* indices,
                          int64_t nnz) {
  uint64_t h = mix(uint64_t(n_indptr) * 0x9e3779b97f4a7c15ULL + uint64_t(nnz));
  h = mix_lane_sums(h, reinterpret_cast<const uint64_t*>(indptr), n_indptr);
  return mix_lane_sums(h, reinterpret_cast<const uint32_t*>(indices), nnz);
}

namespace {

// The plain scatter, row by row; any in-range pattern, sorted or not.
void scatter_transposed(const int64_t* indptr, int64_t rows, const int32_t* indices, int64_t cols,
                        const int64_t* t_indptr, int32_t* t_indices, int64_t* perm) {
  std::vector<int64_t> next(t_indptr, t_indptr + cols);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t k = indptr[r]; k < indptr[r + 1]; ++k) {
      const int64_t dst = next[indices[k]]++;
      t_indices[dst] = int32_t(r);
      perm[dst] = k;
    }
  }
}

}  // namespace

void transpose_csr(const int64_t* indptr, int64_t rows, const int32_t* indices, int64_t cols,
                   int64_t* t_indptr, int32_t* t_indices, int64_t* perm, int num_threads) {
  for (int64_t c = 0; c <= cols; ++c) t_indptr[c] = 0;
  const int64_t nnz = indptr[rows];
  for (int64_t k = 0; k < nnz; ++k) ++t_indptr[indices[k] + 1];
  for (int64_t c = 0; c < cols; ++c) t_indptr[c + 1] += t_indptr[c];
  // The scatter goes block of columns by block: a few hundred write cursors stay in
  // cache where thousands did not (3-4x faster on a 4096-column layer), and blocks
  // are independent, so threads share them. Within a row a block's columns are one
  // run of the sorted indices, found by binary search.
  constexpr int64_t kBlock = 512;
  const int64_t blocks = (cols + kBlock - 1) / kBlock;
  int parts = int(std::min<int64_t>(std::max(1, num_threads), blocks));
  if (nnz < (int64_t(1) << 16)) parts = 1;
  struct Ctx {
    const int64_t* indptr;
    int64_t rows;
    const int32_t* indices;
    int64_t cols, blocks;
    const int64_t* t_indptr;
    int32_t* t_indices;
    int64_t* perm;
    std::vector<uint8_t> complete;
  } ctx{indptr, rows, indices, cols, blocks, t_indptr, t_indices, perm,
        std::vector<uint8_t>(size_t(parts), 1)};
  parallel_run(parts, [](void* p, int t, int n) {
    Ctx& c = *static_cast<Ctx*>(p);
    std::vector<int64_t> next(static_cast<size_t>(kBlock));
    for (int64_t b = t; b < c.blocks; b += n) {
      const int32_t c0 = int32_t(b * kBlock), c1 = int32_t(std::min(c.cols, (b + 1) * kBlock));
      for (int32_t col = c0; col < c1; ++col) next[size_t(col - c0)] = c.t_indptr[col];
      // Rows in order: each column's row list comes out sorted.
      for (int64_t r = 0; r < c.rows; ++r) {
        const int32_t* end = c.indices + c.indptr[r + 1];
        for (const int32_t* q = std::lower_bound(c.indices + c.indptr[r], end, c0); q < end && *q < c1;
             ++q) {
          const int64_t dst = next[size_t(*q - c0)]++;
          c.t_indices[dst] = int32_t(r);
          c.perm[dst] = q - c.indices;
        }
      }
      for (int32_t col = c0; col < c1; ++col)  // an unsorted row would leave gaps
        if (next[size_t(col - c0)] != c.t_indptr[col + 1]) c.complete[size_t(t)] = 0;
    }
  }, &ctx);
  for (uint8_t done : ctx.complete)
    if (!done) return scatter_transposed(indptr, rows, indices, cols, t_indptr, t_indices, perm);
}

void balance_rows(const int64_t* indptr, int64_t rows, int parts, int64_t* bounds) {
  // Cost of rows [0, r): nonzeros plus a per-row overhead (loads, stores, loop).
  constexpr int64_t kRowCost = 4;
  auto cost = [&](int64_t r) { return indptr[r] + kRowCost * r; };
  const int64_t total = cost(rows);
  bounds[0] = 0;
  for (int p = 1; p < parts; ++p) {
    const int64_t target = total * p / parts;
    int64_t lo = bounds[p - 1], hi = rows;  // first r with cost(r) >= target
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo) / 2;
      if (cost(mid) < target) lo = mid + 1;
      else hi = mid;
    }
    bounds[p] = lo;
  }
  bounds[parts] = rows;
}

}  // namespace sparseprop
