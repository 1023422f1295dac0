// neon kernels: simd/neon.h's Vec plugged into the shared kernel bodies.
#include <cstdint>
#include <arm_neon.h>
#include <cstring>

#include "kernels.h"

namespace {  // internal linkage: this ISA's copies stay private to this object
#include "simd/neon.h"
#include "kernels/csr_impl.h"
#include "kernels/transpose_impl.h"
}  // namespace

namespace sparseprop {
const KernelTable& neon_kernels() {
  static const KernelTable table{"neon", spmm_rows, sddmm_rows, transpose_cols,
                                        Vec::width, Vec::spmm_block, Vec::sddmm_block};
  return table;
}
}  // namespace sparseprop
