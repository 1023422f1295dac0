#include "pattern_edit.h"

#include <cstring>
#include <vector>

#include "thread_pool.h"

namespace sparseprop {
namespace {

constexpr int64_t kMinPerThread = 1 << 16;  // below this a second thread costs more than it saves
constexpr int kBins = 1 << 16;              // radix digits: the key's high, then low 16 bits

// Runs body(t, begin, end) on `parts` contiguous slices of [0, n).
template <class Body>
void for_slices(int64_t n, int parts, const Body& body) {
  struct Ctx {
    int64_t n;
    const Body* body;
  } ctx{n, &body};
  parallel_run(parts, [](void* p, int t, int count) {
    auto* c = static_cast<Ctx*>(p);
    (*c->body)(t, c->n * t / count, c->n * (t + 1) / count);
  }, &ctx);
}

int threads_for(int64_t work, int num_threads) {
  const int64_t useful = work / kMinPerThread;
  return int(useful < 1 ? 1 : (useful < num_threads ? useful : num_threads));
}

// An unsigned key with the float's order, so a radix select on the key bits
// selects on the floats. Adding +0 first turns -0 into +0: they compare equal.
inline uint32_t order_key(float f) {
  f += 0.0f;
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u ^ (uint32_t(int32_t(u) >> 31) | 0x80000000u);  // negative: all bits; else the sign
}

inline float from_key(uint32_t key) {
  const uint32_t u = (key & 0x80000000u) ? (key & 0x7fffffffu) : ~key;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline bool is_nan(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return (u & 0x7fffffffu) > 0x7f800000u;
}

// The digit holding the k-th highest key, given the digit counts, and how many
// keys the choice still needs from inside that digit (1..hist[digit]).
void pick_digit(const std::vector<int64_t>& hist, int64_t k, uint32_t* digit, int64_t* need) {
  int64_t above = 0;
  for (int d = kBins - 1; d >= 0; --d) {
    if (above + hist[d] >= k) {
      *digit = uint32_t(d);
      *need = k - above;
      return;
    }
    above += hist[d];
  }
  *digit = 0;  // unreachable: the caller checked 1 <= k <= the number of keys counted
  *need = k - above;
}

// One slice's digit counts: the high 16 key bits of every considered score
// (kHigh), or the low 16 bits of those whose high bits are `high` (rare: a
// branch predicts well). In the first pass the scores a random mask excludes go
// to spare bins past the end instead of a mispredicted branch, eight of them so
// that a run of excluded scores does not chain on one counter.
constexpr int kSpare = 8;

template <bool kHigh, bool kGated>
bool count_digits(const float* scores, const uint8_t* allowed, int64_t b, int64_t e, uint32_t high,
                  uint32_t* h) {
  bool nan = false;
  for (int64_t i = b; i < e; ++i) {
    const uint32_t key = order_key(scores[i]);
    if (kHigh) {
      const bool counted = !kGated || allowed[i] != 0;
      nan |= counted & is_nan(scores[i]);
      ++h[counted ? key >> 16 : kBins + (i & (kSpare - 1))];
    } else if ((key >> 16) == high && (!kGated || allowed[i])) {
      ++h[key & (kBins - 1)];
    }
  }
  return nan;
}

// The digit counts over all considered scores (see count_digits); flags NaN.
template <bool kHigh>
void histogram(const float* scores, const uint8_t* allowed, int64_t n, int parts, uint32_t high,
               std::vector<int64_t>* hist, bool* saw_nan) {
  constexpr size_t kStride = kBins + kSpare;  // the digits and the spare bins
  std::vector<uint32_t> local(size_t(parts) * kStride, 0);  // < 2^32 keys per slice (checked)
  std::vector<uint8_t> nan(size_t(parts), 0);
  for_slices(n, parts, [&](int t, int64_t b, int64_t e) {
    uint32_t* h = local.data() + size_t(t) * kStride;
    nan[size_t(t)] = allowed ? count_digits<kHigh, true>(scores, allowed, b, e, high, h)
                             : count_digits<kHigh, false>(scores, allowed, b, e, high, h);
  });
  hist->assign(kBins, 0);
  for (int t = 0; t < parts; ++t) {
    *saw_nan |= nan[size_t(t)] != 0;
    const uint32_t* h = local.data() + size_t(t) * kStride;
    for (int d = 0; d < kBins; ++d) (*hist)[d] += h[d];
  }
}

// Marks the scores above the threshold; returns how many equal it. Float compares
// (no NaN gets here) agree with the key order and vectorize.
template <bool kGated>
int64_t mark_above(const float* scores, const uint8_t* allowed, int64_t b, int64_t e, float cut,
                   uint8_t* mask) {
  int64_t equal = 0;
  for (int64_t i = b; i < e; ++i) {
    const bool considered = !kGated || allowed[i] != 0;
    mask[i] = uint8_t(considered & (scores[i] > cut));
    equal += considered & (scores[i] == cut);
  }
  return equal;
}

template <class T>
void gather_rows(const T* dense, int64_t rows, int64_t cols, const int64_t* indptr,
                 const int32_t* indices, int num_threads, T* out) {
  for_slices(rows, threads_for(indptr[rows] + rows, num_threads), [&](int, int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const T* row = dense + r * cols;
      for (int64_t k = indptr[r]; k < indptr[r + 1]; ++k) out[k] = row[indices[k]];
    }
  });
}

}  // namespace

SelectStatus top_k_threshold(const float* scores, const uint8_t* allowed, int64_t n, int64_t k,
                             int num_threads, TopK* out) {
  int parts = threads_for(n, num_threads);
  while (n / parts >= (int64_t(1) << 32)) ++parts;  // keeps the per-slice counts in 32 bits
  bool saw_nan = false;
  std::vector<int64_t> hist;
  histogram<true>(scores, allowed, n, parts, 0, &hist, &saw_nan);
  if (saw_nan) return SelectStatus::kNaN;
  int64_t considered = 0;
  for (int64_t count : hist) considered += count;
  if (k > considered) return SelectStatus::kTooFew;
  uint32_t high, low;
  int64_t need, ties;
  pick_digit(hist, k, &high, &need);
  histogram<false>(scores, allowed, n, parts, high, &hist, &saw_nan);
  pick_digit(hist, need, &low, &ties);
  out->threshold = from_key((high << 16) | low);
  out->ties_kept = ties;
  return SelectStatus::kSelected;
}

void top_k_fill(const float* scores, const uint8_t* allowed, int64_t n, TopK top, int num_threads,
                uint8_t* mask) {
  const int parts = threads_for(n, num_threads);
  const float cut = top.threshold;
  std::vector<int64_t> ties(size_t(parts), 0);
  for_slices(n, parts, [&](int t, int64_t b, int64_t e) {
    ties[size_t(t)] = allowed ? mark_above<true>(scores, allowed, b, e, cut, mask)
                              : mark_above<false>(scores, allowed, b, e, cut, mask);
  });
  // The first ties_kept equal scores in position order: slice t keeps what the
  // slices before it left of the quota.
  std::vector<int64_t> quota(size_t(parts), 0);
  int64_t left = top.ties_kept;
  for (int t = 0; t < parts; ++t) {
    quota[size_t(t)] = left < ties[size_t(t)] ? left : ties[size_t(t)];
    left -= quota[size_t(t)];
  }
  for_slices(n, parts, [&](int t, int64_t b, int64_t e) {
    int64_t todo = quota[size_t(t)];
    for (int64_t i = b; i < e && todo > 0; ++i) {
      if ((!allowed || allowed[i]) && scores[i] == cut) {
        mask[i] = 1;
        --todo;
      }
    }
  });
}

void mask_row_pointer(const uint8_t* mask, int64_t rows, int64_t cols, int num_threads,
                      int64_t* indptr) {
  for_slices(rows, threads_for(rows * cols, num_threads), [&](int, int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const uint8_t* row = mask + r * cols;
      int64_t count = 0;
      for (int64_t j = 0; j < cols; ++j) count += row[j] != 0;
      indptr[r + 1] = count;
    }
  });
  indptr[0] = 0;
  for (int64_t r = 0; r < rows; ++r) indptr[r + 1] += indptr[r];
}

bool mask_column_indices(const uint8_t* mask, int64_t rows, int64_t cols, const int64_t* indptr,
                         int num_threads, int32_t* indices) {
  const int parts = threads_for(rows * cols, num_threads);
  std::vector<uint8_t> ok(size_t(parts), 1);
  for_slices(rows, parts, [&](int t, int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const uint8_t* row = mask + r * cols;
      int32_t* out = indices + indptr[r];
      int32_t* const end = indices + indptr[r + 1];
      int64_t found = 0;  // counts past `end` too, so a mismatch is seen
      int64_t j = 0;
      for (; j + 8 <= cols; j += 8) {  // eight bytes at a time: empty stretches cost one test
        uint64_t word;
        std::memcpy(&word, row + j, 8);
        if (!word) continue;
        word |= word >> 4;  // any nonzero byte -> its lowest bit
        word |= word >> 2;
        word |= word >> 1;
        word &= 0x0101010101010101ull;
        while (word) {
          if (out < end) *out++ = int32_t(j + (__builtin_ctzll(word) >> 3));
          ++found;
          word &= word - 1;
        }
      }
      for (; j < cols; ++j) {
        if (!row[j]) continue;
        if (out < end) *out++ = int32_t(j);
        ++found;
      }
      if (found != indptr[r + 1] - indptr[r]) ok[size_t(t)] = 0;
    }
  });
  for (uint8_t slice_ok : ok)
    if (!slice_ok) return false;
  return true;
}

void gather_pattern(const void* dense, int elem_size, int64_t rows, int64_t cols,
                    const int64_t* indptr, const int32_t* indices, int num_threads, void* out) {
  switch (elem_size) {
    case 2:
      gather_rows(static_cast<const uint16_t*>(dense), rows, cols, indptr, indices, num_threads,
                  static_cast<uint16_t*>(out));
      break;
    case 4:
      gather_rows(static_cast<const uint32_t*>(dense), rows, cols, indptr, indices, num_threads,
                  static_cast<uint32_t*>(out));
      break;
    default:
      gather_rows(static_cast<const uint64_t*>(dense), rows, cols, indptr, indices, num_threads,
                  static_cast<uint64_t*>(out));
  }
}

}  // namespace sparseprop
