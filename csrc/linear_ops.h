// Threaded entry points: split the work, run the active ISA's kernels.
#pragma once
#include <cstdint>

#include "kernels.h"

namespace sparseprop {

// Rows are split across threads by nonzero count. With args.perm set, the
// values are first gathered into pattern order (one pass, not one per block).
void spmm(const SpmmArgs& args, int64_t rows, int num_threads);
void sddmm(const SddmmArgs& args, int64_t rows, int num_threads);
void transpose(const TransposeArgs& args, int num_threads);

// Image layouts for convolutions. NCHW is the usual (n, c, h, w) row-major;
// "batch-inner" is (c, h, w, n) row-major with a zero border.
// to_batch_inner: dst (c, h + top + bottom, w + left + right, n) from src (n, c, h, w).
void to_batch_inner(const float* src, int64_t n, int64_t c, int64_t h, int64_t w, float* dst,
                    int64_t top, int64_t bottom, int64_t left, int64_t right, int num_threads);
// from_batch_inner: dst (n, c, h, w) = the window at (top, left) of src (c, hs, ws, n).
void from_batch_inner(const float* src, int64_t hs, int64_t ws, int64_t top, int64_t left,
                      float* dst, int64_t n, int64_t c, int64_t h, int64_t w, int num_threads);

}  // namespace sparseprop
