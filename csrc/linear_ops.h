// Threaded entry points: split rows by nonzero count, run the active ISA's kernel.
#pragma once
#include <cstdint>

#include "kernels.h"

namespace sparseprop {

void spmm(const SpmmArgs& args, int64_t rows, int num_threads);
void sddmm(const SddmmArgs& args, int64_t rows, int num_threads);

}  // namespace sparseprop
