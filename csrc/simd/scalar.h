// One-lane "vector": the portable reference path. No intrinsics.
#pragma once

struct Vec {
  using reg = float;
  static constexpr int width = 1;
  static constexpr int spmm_block = 8;   // vectors per batch block in SpMM
  static constexpr int sddmm_block = 8;  // vectors per batch block in SDDMM
  static reg zero() { return 0.0f; }
  static reg set1(float v) { return v; }
  static reg load(const float* p) { return *p; }
  static void store(float* p, reg v) { *p = v; }
  static reg load_partial(const float* p, int) { return *p; }
  static void store_partial(float* p, reg v, int) { *p = v; }
  static reg fma(reg a, reg b, reg c) { return a * b + c; }
  static reg mul(reg a, reg b) { return a * b; }
  static reg add(reg a, reg b) { return a + b; }
  static float hsum(reg v) { return v; }
  static reg load_index_gather(const float* base, const int32_t* idx) { return base[*idx]; }
};
