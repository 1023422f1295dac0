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

// y (cols) = W^T x for a CSR W (rows, cols) and x (rows): the input gradient at
// batch 1, scattered along W's own rows. Next to the gather form on the
// transposed pattern it needs no transposed pattern and no permuted copy of
// the values (a random-access pass over all of them). Scalar on every ISA:
// AVX2 has no scatter, and the scattered adds hit y in L1.
void spmv_transposed(const int64_t* indptr, const int32_t* indices, const float* values,
                     int64_t rows, int64_t cols, const float* x, float* y, int num_threads);

// Image layouts for convolutions. NCHW is the usual (n, c, h, w) row-major.
// The phase layout is (c, sh, sw, hs, ws, n) row-major: the image padded by
// (top, left) and split into stride phases, zeros where no pixel lands;
// padded pixel (p, q) sits in phase (p % sh, q % sw) at (p / sh, q / sw).
// Stride 1 is a plain zero-bordered, batch-innermost copy.
void to_phase_layout(const float* src, int64_t n, int64_t c, int64_t h, int64_t w, int64_t sh,
                     int64_t sw, int64_t top, int64_t left, int64_t hs, int64_t ws, float* dst,
                     int num_threads);
// The inverse, keeping only real pixels: dst (n, c, h, w) from src (phase layout).
void from_phase_layout(const float* src, int64_t sh, int64_t sw, int64_t top, int64_t left,
                       int64_t hs, int64_t ws, float* dst, int64_t n, int64_t c, int64_t h,
                       int64_t w, int num_threads);

// NCHW-native convolutions, on `planes` row-major (h, w) images. split_phases pads
// each by (top, left) and splits it into stride phases: dst (planes, sh, sw, hs, ws)
// holds padded pixel (i*sh + a, j*sw + b) at [a, b, i, j], zero where no pixel
// lands (stride 1: a zero-padded copy). merge_phases is the inverse on real pixels
// (stride 1: a crop). Both run at copy speed, no transpose.
void split_phases(const float* src, int64_t planes, int64_t h, int64_t w, int64_t sh, int64_t sw,
                  int64_t top, int64_t left, float* dst, int64_t hs, int64_t ws, int num_threads);
void merge_phases(const float* src, int64_t planes, int64_t sh, int64_t sw, int64_t hs, int64_t ws,
                  int64_t top, int64_t left, float* dst, int64_t h, int64_t w, int num_threads);

}  // namespace sparseprop
