#include "dispatch.h"

#include <atomic>
#include <cstdlib>
#include <stdexcept>

#include "cpu_features.h"

namespace sparseprop {
namespace {

const KernelTable* table_for(const std::string& name) {
  const CpuFeatures& f = cpu_features();
  if (name == "scalar") return &scalar_kernels();
#if defined(SPARSEPROP_X86)
  if (name == "avx2") return f.avx2 ? &avx2_kernels() : nullptr;
  if (name == "avx512") return f.avx512f ? &avx512_kernels() : nullptr;
#endif
#if defined(SPARSEPROP_NEON)
  if (name == "neon") return f.neon ? &neon_kernels() : nullptr;
#endif
  (void)f;
  return nullptr;
}

const KernelTable* best_table() {
  const std::vector<std::string> isas = available_isas();
  return table_for(isas.back());
}

const KernelTable* initial_table() {
  const char* env = std::getenv("SPARSEPROP_ISA");
  if (env && *env && std::string(env) != "auto") {
    // A forced path that cannot run is an error, not a silent fallback; but an
    // exception during import would be hard to read, so it is reported by the
    // Python layer, which re-applies the variable through set_isa().
    if (const KernelTable* t = table_for(env)) return t;
  }
  return best_table();
}

std::atomic<const KernelTable*>& active_slot() {
  static std::atomic<const KernelTable*> slot{initial_table()};
  return slot;
}

}  // namespace

std::vector<std::string> known_isas() { return {"scalar", "avx2", "avx512", "neon"}; }

const KernelTable* compiled_table(const std::string& name) {
  if (name == "scalar") return &scalar_kernels();
#if defined(SPARSEPROP_X86)
  if (name == "avx2") return &avx2_kernels();
  if (name == "avx512") return &avx512_kernels();
#endif
#if defined(SPARSEPROP_NEON)
  if (name == "neon") return &neon_kernels();
#endif
  return nullptr;
}

std::vector<std::string> compiled_isas() {
  std::vector<std::string> isas{"scalar"};
#if defined(SPARSEPROP_X86)
  isas.push_back("avx2");
  isas.push_back("avx512");
#endif
#if defined(SPARSEPROP_NEON)
  isas.push_back("neon");
#endif
  return isas;
}

std::vector<std::string> available_isas() {
  std::vector<std::string> isas;
  for (const std::string& name : compiled_isas())
    if (table_for(name)) isas.push_back(name);
  return isas;
}

const KernelTable& active_kernels() { return *active_slot().load(std::memory_order_acquire); }

void set_isa(const std::string& name) {
  if (name == "auto") {
    active_slot().store(best_table(), std::memory_order_release);
    return;
  }
  bool known = false, named = false;
  for (const std::string& isa : compiled_isas()) known |= isa == name;
  std::string expected = "auto";
  for (const std::string& isa : known_isas()) {
    named |= isa == name;
    expected += ", " + isa;
  }
  if (!named) throw std::invalid_argument("unknown ISA '" + name + "'; expected one of " + expected);
  const KernelTable* t = known ? table_for(name) : nullptr;
  if (!t) throw std::runtime_error("ISA '" + name + "' is not supported by this CPU or build");
  active_slot().store(t, std::memory_order_release);
}

}  // namespace sparseprop
