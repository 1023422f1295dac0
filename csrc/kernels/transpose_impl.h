// Cache-blocked out-of-place transpose, included like csr_impl.h (inside the
// ISA's anonymous namespace). Uses transpose8x8() when the ISA header has one.

#ifndef SPARSEPROP_HAVE_TRANSPOSE8
inline void transpose8x8(const float* s, int64_t lds, float* d, int64_t ldd) {
  for (int i = 0; i < 8; ++i)
    for (int j = 0; j < 8; ++j) d[j * ldd + i] = s[i * lds + j];
}
#endif

// Copies the 8-aligned part of tile [r0, r1) x [c0, c1) in 8x8 blocks; the
// ragged edges go element by element. COLS_OUTER walks the blocks column by
// column, so each destination row is written as one contiguous run.
template <bool COLS_OUTER>
void transpose_tile(const sparseprop::TransposeArgs& a, int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
  const int64_t r8 = r0 + (r1 - r0) / 8 * 8, c8 = c0 + (c1 - c0) / 8 * 8;
  auto block = [&](int64_t r, int64_t c) {
    transpose8x8(a.src + r * a.ld_src + c, a.ld_src, a.dst + c * a.ld_dst + r, a.ld_dst);
  };
  if (COLS_OUTER) {
    for (int64_t c = c0; c < c8; c += 8)
      for (int64_t r = r0; r < r8; r += 8) block(r, c);
  } else {
    for (int64_t r = r0; r < r8; r += 8)
      for (int64_t c = c0; c < c8; c += 8) block(r, c);
  }
  for (int64_t r = r0; r < r1; ++r)
    for (int64_t c = (r < r8 ? c8 : c0); c < c1; ++c) a.dst[c * a.ld_dst + r] = a.src[r * a.ld_src + c];
}

// Tiles of 8192 floats (32 KiB). Wide sources (many more columns than rows)
// take 32 x 256 tiles row-block by row-block, so each source row streams in
// 1 KiB runs; tall ones take 256 x 32 tiles column-block by column-block, so
// each destination row is written in 1 KiB runs. The other orders leave the
// far-apart rows fighting over a few cache sets.
void transpose_cols(const sparseprop::TransposeArgs& a, int64_t c0, int64_t c1) {
  const bool tall = a.rows >= c1 - c0;
  const int64_t tile_rows = tall ? 256 : 32, tile_cols = tall ? 32 : 256;
  for (int64_t rb = 0; rb < a.rows; rb += tile_rows) {
    const int64_t re = min64(rb + tile_rows, a.rows);
    for (int64_t cb = c0; cb < c1; cb += tile_cols) {
      const int64_t ce = min64(cb + tile_cols, c1);
      if (tall) transpose_tile<true>(a, rb, re, cb, ce);
      else transpose_tile<false>(a, rb, re, cb, ce);
    }
  }
}
