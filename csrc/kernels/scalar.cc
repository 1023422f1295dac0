// scalar kernels: simd/scalar.h's Vec plugged into the shared kernel bodies.
#include <cstdint>


#include "kernels.h"

namespace {  // internal linkage: this ISA's copies stay private to this object
#include "simd/scalar.h"
#include "kernels/csr_impl.h"
#include "kernels/transpose_impl.h"
}  // namespace

namespace sparseprop {
const KernelTable& scalar_kernels() {
  static const KernelTable table{"scalar", spmm_rows, sddmm_rows, transpose_cols,
                                        Vec::width, Vec::spmm_block, Vec::sddmm_block};
  return table;
}
}  // namespace sparseprop
