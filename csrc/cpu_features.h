// What the running CPU (and its OS) can execute.
#pragma once

namespace sparseprop {

struct CpuFeatures {
  bool avx2 = false;     // AVX2 + FMA, with the OS saving YMM state
  bool avx512f = false;  // AVX-512F, with the OS saving ZMM and opmask state
  bool neon = false;     // aarch64 Advanced SIMD
};

// Detected once, on first call.
const CpuFeatures& cpu_features();

}  // namespace sparseprop
