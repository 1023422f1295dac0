// avx512 kernels: simd/avx512.h's Vec plugged into the shared kernel bodies.
#include <cstdint>
#include <immintrin.h>

#include "kernels.h"

namespace {  // internal linkage: this ISA's copies stay private to this object
#include "simd/avx512.h"
#include "simd/x86_transpose8.h"
#define SPARSEPROP_HAVE_TRANSPOSE8 1
#include "kernels/csr_impl.h"
#include "kernels/transpose_impl.h"
}  // namespace

namespace sparseprop {
const KernelTable& avx512_kernels() {
  static const KernelTable table{"avx512", spmm_rows, sddmm_rows, transpose_cols,
                                        Vec::width, Vec::spmm_block, Vec::sddmm_block};
  return table;
}
}  // namespace sparseprop
