// AVX2 + FMA: 8 float lanes. Compile only with -mavx2 -mfma.
#pragma once
#include <immintrin.h>

struct Vec {
  using reg = __m256;
  static constexpr int width = 8;
  static constexpr int spmm_block = 8;   // 8 x 8 floats of accumulators per row
  static constexpr int sddmm_block = 8;  // dY block lives in 8 of the 16 ymm registers
  static reg zero() { return _mm256_setzero_ps(); }
  static reg set1(float v) { return _mm256_set1_ps(v); }
  static reg load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, reg v) { _mm256_storeu_ps(p, v); }
  static __m256i mask(int n) {
    // Lanes [0, n) on; masked loads never touch memory in the other lanes.
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static reg load_partial(const float* p, int n) { return _mm256_maskload_ps(p, mask(n)); }
  static void store_partial(float* p, reg v, int n) { _mm256_maskstore_ps(p, mask(n), v); }
  static reg fma(reg a, reg b, reg c) { return _mm256_fmadd_ps(a, b, c); }
  static reg mul(reg a, reg b) { return _mm256_mul_ps(a, b); }
  static reg add(reg a, reg b) { return _mm256_add_ps(a, b); }
  static float hsum(reg v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  // base[idx[0..7]]: one gather per 8 nonzeros in the batch-1 forms.
  static reg load_index_gather(const float* base, const int32_t* idx) {
    return _mm256_i32gather_ps(base, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(idx)), 4);
  }
};
