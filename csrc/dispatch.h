// Chooses the kernel table: best ISA the CPU supports, unless forced.
#pragma once
#include <string>
#include <vector>

#include "kernels.h"

namespace sparseprop {

// ISAs compiled into this build and executable on this CPU, best last.
std::vector<std::string> available_isas();
// ISAs compiled into this build, whether or not this CPU can run them.
std::vector<std::string> compiled_isas();
// Every ISA name the dispatcher knows, on any platform: the one list of ISA names.
std::vector<std::string> known_isas();
// The table of a compiled ISA (runnable or not: its fields are data), else nullptr.
const KernelTable* compiled_table(const std::string& name);

// The active table. The first call picks the best available ISA, or the one
// named by the SPARSEPROP_ISA environment variable.
const KernelTable& active_kernels();

// Forces an ISA ("auto" restores the automatic choice). Throws
// std::invalid_argument for an unknown name and std::runtime_error for an ISA
// this build or CPU cannot run.
void set_isa(const std::string& name);

}  // namespace sparseprop
