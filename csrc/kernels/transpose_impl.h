// Cache-blocked out-of-place transpose, included like csr_impl.h (inside the
// ISA's anonymous namespace). Uses transpose8x8() when the ISA header has one.

#ifndef SPARSEPROP_HAVE_TRANSPOSE8
inline void transpose8x8(const float* s, int64_t lds, float* d, int64_t ldd) {
  for (int i = 0; i < 8; ++i)
    for (int j = 0; j < 8; ++j) d[j * ldd + i] = s[i * lds + j];
}
#endif

void transpose_cols(const sparseprop::TransposeArgs& a, int64_t c0, int64_t c1) {
  // Tiles of 32 source rows x 256 columns (32 KiB): each source row is read
  // in 1 KiB runs, which keeps the hardware prefetchers streaming even when
  // rows are far apart, and each destination row gets 32 contiguous floats.
  constexpr int64_t kTileRows = 32, kTileCols = 256;
  for (int64_t rb = 0; rb < a.rows; rb += kTileRows) {
    const int64_t re = min64(rb + kTileRows, a.rows);
    for (int64_t cb = c0; cb < c1; cb += kTileCols) {
      const int64_t ce = min64(cb + kTileCols, c1);
      int64_t r = rb;
      for (; r + 8 <= re; r += 8) {
        int64_t c = cb;
        for (; c + 8 <= ce; c += 8)
          transpose8x8(a.src + r * a.ld_src + c, a.ld_src, a.dst + c * a.ld_dst + r, a.ld_dst);
        for (; c < ce; ++c)
          for (int64_t i = r; i < r + 8; ++i) a.dst[c * a.ld_dst + i] = a.src[i * a.ld_src + c];
      }
      for (; r < re; ++r)
        for (int64_t c = cb; c < ce; ++c) a.dst[c * a.ld_dst + r] = a.src[r * a.ld_src + c];
    }
  }
}
