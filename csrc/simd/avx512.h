// AVX-512F: 16 float lanes. Compile only with -mavx512f.
#pragma once
#include <immintrin.h>

struct Vec {
  using reg = __m512;
  static constexpr int width = 16;
  static constexpr int spmm_block = 8;   // 8 x 16 floats of accumulators per row
  static constexpr int sddmm_block = 16;  // dY block lives in 16 of the 32 zmm registers
  static reg zero() { return _mm512_setzero_ps(); }
  static reg set1(float v) { return _mm512_set1_ps(v); }
  static reg load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, reg v) { _mm512_storeu_ps(p, v); }
  static __mmask16 mask(int n) { return static_cast<__mmask16>((1u << n) - 1u); }
  static reg load_partial(const float* p, int n) { return _mm512_maskz_loadu_ps(mask(n), p); }
  static void store_partial(float* p, reg v, int n) { _mm512_mask_storeu_ps(p, mask(n), v); }
  static reg fma(reg a, reg b, reg c) { return _mm512_fmadd_ps(a, b, c); }
  static reg mul(reg a, reg b) { return _mm512_mul_ps(a, b); }
  static reg add(reg a, reg b) { return _mm512_add_ps(a, b); }
  static float hsum(reg v) { return _mm512_reduce_add_ps(v); }
  static reg load_index_gather(const float* base, const int32_t* idx) {
    return _mm512_i32gather_ps(_mm512_loadu_si512(idx), base, 4);
  }
};
