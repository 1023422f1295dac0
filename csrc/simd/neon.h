// aarch64 Advanced SIMD: 4 float lanes. Part of the aarch64 baseline.
#pragma once
#include <arm_neon.h>
#include <cstring>

struct Vec {
  using reg = float32x4_t;
  static constexpr int width = 4;
  static constexpr int spmm_block = 8;   // 8 x 4 floats of accumulators per row
  static constexpr int sddmm_block = 8;  // dY block lives in 8 of the 32 q registers
  static reg zero() { return vdupq_n_f32(0.0f); }
  static reg set1(float v) { return vdupq_n_f32(v); }
  static reg load(const float* p) { return vld1q_f32(p); }
  static void store(float* p, reg v) { vst1q_f32(p, v); }
  // No masked loads on NEON: go through a zeroed stack buffer so no lane past n is read.
  static reg load_partial(const float* p, int n) {
    float buf[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    std::memcpy(buf, p, sizeof(float) * static_cast<unsigned>(n));
    return vld1q_f32(buf);
  }
  static void store_partial(float* p, reg v, int n) {
    float buf[4];
    vst1q_f32(buf, v);
    std::memcpy(p, buf, sizeof(float) * static_cast<unsigned>(n));
  }
  static reg fma(reg a, reg b, reg c) { return vfmaq_f32(c, a, b); }
  static reg mul(reg a, reg b) { return vmulq_f32(a, b); }
  static reg add(reg a, reg b) { return vaddq_f32(a, b); }
  static float hsum(reg v) { return vaddvq_f32(v); }
  static reg load_index_gather(const float* base, const int32_t* idx) {
    const float lanes[4] = {base[idx[0]], base[idx[1]], base[idx[2]], base[idx[3]]};
    return vld1q_f32(lanes);
  }
};
