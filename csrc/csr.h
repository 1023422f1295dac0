// CSR pattern checks and the transposed pattern used by the input gradient.
#pragma once
#include <cstdint>
#include <string>

namespace sparseprop {

// Returns "" for a valid pattern, otherwise a message naming the first problem:
// indptr must start at 0, never decrease and end at nnz; indices must lie in
// [0, cols) and strictly increase within a row (sorted, no duplicates).
std::string check_csr(const int64_t* indptr, int64_t rows, const int32_t* indices, int64_t nnz,
                      int64_t cols);

// The part of check_csr() that memory safety depends on (no sortedness): ""
// when indptr starts at 0, never decreases, ends at nnz, and indices are in [0, cols).
std::string check_bounds(const int64_t* indptr, int64_t rows, const int32_t* indices, int64_t nnz,
                         int64_t cols);

// The pattern of W^T in CSR (= W in CSC): t_indptr has cols + 1 entries,
// t_indices the row of each nonzero (sorted within each column), and perm[k]
// the position of that nonzero in the original values array. Needs a valid
// pattern (sorted rows); num_threads share the work.
void transpose_csr(const int64_t* indptr, int64_t rows, const int32_t* indices, int64_t cols,
                   int64_t* t_indptr, int32_t* t_indices, int64_t* perm, int num_threads = 1);

// A position-dependent checksum of a pattern's indptr and indices, cheap enough
// to run on every call: the layers compare it with the value recorded when the
// pattern was validated to notice edits that bypass torch's version counter
// (.data, numpy views). Not cryptographic: any realistic edit changes it.
uint64_t pattern_checksum(const int64_t* indptr, int64_t n_indptr, const int32_t* indices,
                          int64_t nnz);

// Splits rows [0, rows) into `parts` contiguous ranges of about equal cost,
// counting each nonzero and a fixed overhead per row. bounds gets parts + 1 entries.
void balance_rows(const int64_t* indptr, int64_t rows, int parts, int64_t* bounds);

}  // namespace sparseprop
