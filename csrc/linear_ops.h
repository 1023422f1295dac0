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

}  // namespace sparseprop
