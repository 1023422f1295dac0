#include "cpu_features.h"

#if defined(SPARSEPROP_X86)
#include <cpuid.h>
#include <cstdint>
#endif

namespace sparseprop {
namespace {

#if defined(SPARSEPROP_X86)
// XCR0 says which register state the OS saves on context switch; CPUID alone
// would claim AVX on a kernel that never enabled it.
uint64_t read_xcr0() {
  uint32_t lo = 0, hi = 0;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (uint64_t(hi) << 32) | lo;
}

CpuFeatures detect() {
  CpuFeatures f;
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
  const bool fma = c & (1u << 12);
  const bool osxsave = c & (1u << 27);
  const bool avx = c & (1u << 28);
  if (!osxsave || !avx) return f;
  const uint64_t xcr0 = read_xcr0();
  const bool os_ymm = (xcr0 & 0x6) == 0x6;            // SSE + AVX state
  const bool os_zmm = (xcr0 & 0xE6) == 0xE6;          // + opmask, ZMM_Hi256, Hi16_ZMM
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return f;
  const bool avx2 = b & (1u << 5);
  const bool avx512f = b & (1u << 16);
  f.avx2 = avx2 && fma && os_ymm;
  f.avx512f = f.avx2 && avx512f && os_zmm;
  return f;
}
#else
CpuFeatures detect() {
  CpuFeatures f;
#if defined(SPARSEPROP_NEON)
  f.neon = true;  // mandatory on aarch64
#endif
  return f;
}
#endif

}  // namespace

const CpuFeatures& cpu_features() {
  static const CpuFeatures features = detect();
  return features;
}

}  // namespace sparseprop
