// A pruner's pattern edits on a dense layer, in a few parallel passes each:
// choosing the k highest scores (radix select on the float bits, no sort and no
// full-size temporary), turning a mask into CSR, and gathering a dense tensor's
// entries at a pattern's positions. On a 4096x4096 layer each pass is a few ms
// where the torch/numpy equivalents took 50-150 ms.
#pragma once
#include <cstdint>

namespace sparseprop {

struct TopK {
  float threshold;     // the k-th highest score
  int64_t ties_kept;   // how many scores equal to it are kept (the first ones)
};

enum class SelectStatus { kSelected, kNaN, kTooFew };

// The k-th highest of the scores where `allowed` is nonzero (every score when
// allowed is null), k >= 1. *out is set only when the result is kSelected; kNaN:
// a considered score is NaN; kTooFew: fewer than k scores are considered.
SelectStatus top_k_threshold(const float* scores, const uint8_t* allowed, int64_t n, int64_t k,
                     int num_threads, TopK* out);

// mask[i] = 1 for exactly the k scores of top_k_threshold's choice (allowed only;
// ties at the threshold broken by position, first kept), else 0.
void top_k_fill(const float* scores, const uint8_t* allowed, int64_t n, TopK top, int num_threads,
                uint8_t* mask);

// Number of nonzero bytes in each row of a rows x cols byte mask, as the CSR
// row pointer: indptr[0] = 0, indptr[r + 1] = indptr[r] + count of row r.
void mask_row_pointer(const uint8_t* mask, int64_t rows, int64_t cols, int num_threads,
                      int64_t* indptr);

// The column of every nonzero byte, row by row (CSR order), at indptr's offsets.
// Writes at most indptr[r + 1] - indptr[r] entries for row r; returns false if a
// row's count differs from that (indptr is not this mask's row pointer).
bool mask_column_indices(const uint8_t* mask, int64_t rows, int64_t cols, const int64_t* indptr,
                         int num_threads, int32_t* indices);

// out[k] = dense[r * cols + indices[k]] for the nonzeros k of row r; elements of
// elem_size bytes (2, 4 or 8), so every storage dtype moves bit for bit.
void gather_pattern(const void* dense, int elem_size, int64_t rows, int64_t cols,
                    const int64_t* indptr, const int32_t* indices, int num_threads, void* out);

}  // namespace sparseprop
