// Kernel argument blocks and the per-ISA function table.
//
// Layout convention: dense operands are "feature-major" (one row per feature,
// the batch contiguous inside a row), so every kernel vectorizes over the batch.
#pragma once
#include <cstdint>

namespace sparseprop {

// Y[r, :] = bias[r] + sum_k values[k] * X[indices[k], :] for rows of a CSR matrix.
// When perm is set, values[perm[k]] is meant instead: the transposed pattern of
// the input gradient reads the original values. The threaded entry point
// gathers them into a contiguous buffer first; kernels never see perm.
struct SpmmArgs {
  const int64_t* indptr;
  const int32_t* indices;
  const float* values;
  const int64_t* perm;  // optional
  const float* bias;    // optional, one per row
  const float* x;       // (cols, n), row stride ldx
  int64_t ldx;
  float* y;             // (rows, n), row stride ldy
  int64_t ldy;
  int64_t n;            // batch length (vector length of one segment)
  // Convolutions: x operand of nonzero k at x + offsets[k] instead of
  // x + indices[k] * ldx, and the product repeated over `segments`, each
  // shifting x and y by their segment strides.
  const int64_t* offsets = nullptr;
  int64_t segments = 1;
  int64_t x_segment_stride = 0;
  int64_t y_segment_stride = 0;
};

// out[k] = dot(DY[r, :], X[indices[k], :]) for every nonzero k of row r.
struct SddmmArgs {
  const int64_t* indptr;
  const int32_t* indices;
  const float* dy;      // (rows, n)
  int64_t lddy;
  const float* x;       // (cols, n)
  int64_t ldx;
  float* out;           // (nnz,)
  int64_t n;
  // As for SpmmArgs; the dot products run over all segments.
  const int64_t* offsets = nullptr;
  int64_t segments = 1;
  int64_t x_segment_stride = 0;
  int64_t dy_segment_stride = 0;
};

// dst (cols, rows) = src (rows, cols)^T; both row-major with leading dimensions.
struct TransposeArgs {
  const float* src;
  int64_t rows, cols, ld_src;
  float* dst;
  int64_t ld_dst;
};

// Each kernel processes the rows [row_begin, row_end); threading is the caller's job.
using SpmmRowsFn = void (*)(const SpmmArgs&, int64_t row_begin, int64_t row_end);
using SddmmRowsFn = void (*)(const SddmmArgs&, int64_t row_begin, int64_t row_end);

struct KernelTable {
  const char* isa;
  SpmmRowsFn spmm;
  SddmmRowsFn sddmm;
  // Transposes the source columns [col_begin, col_end), i.e. those dst rows.
  void (*transpose)(const TransposeArgs&, int64_t col_begin, int64_t col_end);
  // Block parameters (simd/<isa>.h), reported by kernel_info(): floats per vector, and
  // vectors per batch block of the SpMM / SDDMM kernels (a block is width * block floats).
  int vector_width;
  int spmm_block;
  int sddmm_block;
};

// Defined in kernels/<isa>.cc; the SIMD ones exist only where compiled.
const KernelTable& scalar_kernels();
#if defined(SPARSEPROP_X86)
const KernelTable& avx2_kernels();
const KernelTable& avx512_kernels();
#endif
#if defined(SPARSEPROP_NEON)
const KernelTable& neon_kernels();
#endif

}  // namespace sparseprop
