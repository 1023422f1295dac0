// SpMM and SDDMM bodies, written once against the `Vec` interface of simd/*.h.
//
// Each kernels/<isa>.cc includes this file inside an anonymous namespace, after
// its own Vec, so every ISA gets private (internal-linkage) copies that the
// linker can never merge across ISAs. Do not include it anywhere else.
//
// The vectorized dimension (the batch for linear layers; output-row segments
// for convolutions) is split into blocks of up to BLOCK vectors; a block's
// accumulators (SpMM) or dY row (SDDMM) stay in registers while a row's
// nonzeros stream past. Blocks are the outer loop so the gathered operands of
// one block stay warm in cache across all rows. The last block may have fewer
// full vectors (NF) and one partial vector (TAIL) of `tail` lanes. OFFS selects
// per-nonzero operand offsets (convolutions) over indices[k] * ldx (linear).

constexpr int kW = Vec::width;
using Reg = typename Vec::reg;

inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

template <int NF, bool TAIL>
inline Reg load_lane_block(const float* p, int u, int tail) {
  return (TAIL && u == NF) ? Vec::load_partial(p + u * kW, tail) : Vec::load(p + u * kW);
}

template <bool OFFS, class Args>
inline const float* operand(const Args& a, int64_t k) {
  return a.x + (OFFS ? a.offsets[k] : a.indices[k] * a.ldx);
}

// Gathered rows of x are random to the hardware prefetcher but known from the
// indices: fetch the block of the nonzero kPrefetchAhead places ahead (clamped
// to `limit`, the end of this thread's nonzeros) while this one computes.
#ifndef SPARSEPROP_PREFETCH
#define SPARSEPROP_PREFETCH 8
#endif
constexpr int64_t kPrefetchAhead = SPARSEPROP_PREFETCH;

template <int NV, bool OFFS, class Args>
inline void prefetch_operand(const Args& a, int64_t k, int64_t limit, int64_t c0) {
  if (kPrefetchAhead == 0) return;
  const int64_t ahead = k + kPrefetchAhead < limit ? k + kPrefetchAhead : limit - 1;
  const char* p = reinterpret_cast<const char*>(operand<OFFS>(a, ahead) + c0);
  constexpr int kBytes = NV * kW * int(sizeof(float));
  for (int b = 0; b < kBytes; b += 64) __builtin_prefetch(p + b);
}

template <int NF, bool TAIL, bool OFFS>
void spmm_block(const sparseprop::SpmmArgs& a, int64_t r0, int64_t r1, int64_t c0, int tail) {
  constexpr int NV = NF + (TAIL ? 1 : 0);
  // Narrow blocks take nonzeros in pairs into two accumulator sets, so there
  // are enough independent FMA chains to hide the FMA latency. (Both sets are
  // named arrays indexed by constants only, so they stay in registers.)
  constexpr bool PAIRS = NV < 4;
  const int64_t limit = a.indptr[r1];
  for (int64_t r = r0; r < r1; ++r) {
    Reg acc[NV], acc2[NV];
    const Reg init = a.bias ? Vec::set1(a.bias[r]) : Vec::zero();
    for (int u = 0; u < NV; ++u) {
      acc[u] = init;
      acc2[u] = Vec::zero();
    }
    int64_t k = a.indptr[r];
    const int64_t end = a.indptr[r + 1];
    if (PAIRS) {
      for (; k + 1 < end; k += 2) {
        prefetch_operand<NV, OFFS>(a, k, limit, c0);
        prefetch_operand<NV, OFFS>(a, k + 1, limit, c0);
        const Reg w0 = Vec::set1(a.values[k]), w1 = Vec::set1(a.values[k + 1]);
        const float* x0 = operand<OFFS>(a, k) + c0;
        const float* x1 = operand<OFFS>(a, k + 1) + c0;
        for (int u = 0; u < NV; ++u) {
          acc[u] = Vec::fma(w0, load_lane_block<NF, TAIL>(x0, u, tail), acc[u]);
          acc2[u] = Vec::fma(w1, load_lane_block<NF, TAIL>(x1, u, tail), acc2[u]);
        }
      }
    }
    for (; k < end; ++k) {
      prefetch_operand<NV, OFFS>(a, k, limit, c0);
      const Reg w = Vec::set1(a.values[k]);
      const float* x = operand<OFFS>(a, k) + c0;
      for (int u = 0; u < NV; ++u) acc[u] = Vec::fma(w, load_lane_block<NF, TAIL>(x, u, tail), acc[u]);
    }
    float* y = a.y + r * a.ldy + c0;
    for (int u = 0; u < NV; ++u) {
      const Reg sum = PAIRS ? Vec::add(acc[u], acc2[u]) : acc[u];
      if (TAIL && u == NF) Vec::store_partial(y + u * kW, sum, tail);
      else Vec::store(y + u * kW, sum);
    }
  }
}

template <int NF, bool TAIL, bool ACCUMULATE, bool OFFS>
void sddmm_block(const sparseprop::SddmmArgs& a, int64_t r0, int64_t r1, int64_t c0, int tail) {
  constexpr int NV = NF + (TAIL ? 1 : 0);
  const int64_t limit = a.indptr[r1];
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t begin = a.indptr[r], end = a.indptr[r + 1];
    if (begin == end) continue;
    Reg dy[NV];
    const float* dy_row = a.dy + r * a.lddy + c0;
    for (int u = 0; u < NV; ++u) dy[u] = load_lane_block<NF, TAIL>(dy_row, u, tail);
    for (int64_t k = begin; k < end; ++k) {
      prefetch_operand<NV, OFFS>(a, k, limit, c0);
      const float* x = operand<OFFS>(a, k) + c0;
      Reg s0 = Vec::mul(dy[0], load_lane_block<NF, TAIL>(x, 0, tail));
      Reg s1 = Vec::zero();
      for (int u = 1; u < NV; ++u) {
        if (u & 1)
          s1 = Vec::fma(dy[u], load_lane_block<NF, TAIL>(x, u, tail), s1);
        else
          s0 = Vec::fma(dy[u], load_lane_block<NF, TAIL>(x, u, tail), s0);
      }
      const float dot = Vec::hsum(Vec::add(s0, s1));
      a.out[k] = ACCUMULATE ? a.out[k] + dot : dot;
    }
  }
}

// Calls Block<NF, TAIL>::run for the partial last block, NF chosen at run time.
template <template <int, bool> class Block, int NF>
struct LastBlock {
  template <class Args>
  static void run(const Args& a, int64_t r0, int64_t r1, int64_t c0, int nf, int tail) {
    if (nf == NF) {
      if (tail) {
        Block<NF, true>::run(a, r0, r1, c0, tail);
      } else if constexpr (NF > 0) {
        Block<NF, false>::run(a, r0, r1, c0, 0);
      }
      return;
    }
    if constexpr (NF > 0) LastBlock<Block, NF - 1>::run(a, r0, r1, c0, nf, tail);
  }
};

// Walks the batch in blocks of BLOCK vectors, then one partial block.
template <int BLOCK, template <int, bool> class Block, class Args>
void for_each_block(const Args& a, int64_t r0, int64_t r1, int64_t n) {
  constexpr int64_t step = int64_t(BLOCK) * kW;
  int64_t c0 = 0;
  for (; c0 + step <= n; c0 += step) Block<BLOCK, false>::run(a, r0, r1, c0, 0);
  const int64_t rest = n - c0;
  if (rest > 0)
    LastBlock<Block, BLOCK - 1>::run(a, r0, r1, c0, int(rest / kW), int(rest % kW));
}

template <int NF, bool TAIL>
struct SpmmBlock {
  static void run(const sparseprop::SpmmArgs& a, int64_t r0, int64_t r1, int64_t c0, int tail) {
    if (a.offsets) spmm_block<NF, TAIL, true>(a, r0, r1, c0, tail);
    else spmm_block<NF, TAIL, false>(a, r0, r1, c0, tail);
  }
};

template <int NF, bool TAIL>
struct SddmmFirstBlock {
  static void run(const sparseprop::SddmmArgs& a, int64_t r0, int64_t r1, int64_t c0, int tail) {
    if (a.offsets) sddmm_block<NF, TAIL, false, true>(a, r0, r1, c0, tail);
    else sddmm_block<NF, TAIL, false, false>(a, r0, r1, c0, tail);
  }
};

template <int NF, bool TAIL>
struct SddmmNextBlock {
  static void run(const sparseprop::SddmmArgs& a, int64_t r0, int64_t r1, int64_t c0, int tail) {
    if (a.offsets) sddmm_block<NF, TAIL, true, true>(a, r0, r1, c0, tail);
    else sddmm_block<NF, TAIL, true, false>(a, r0, r1, c0, tail);
  }
};

// Batch 1 (a vector, not a matrix, on the dense side): the batch-vectorized
// blocks would use one lane of each vector. These forms vectorize along a
// row's nonzeros instead, gathering x by index; they need contiguous x.
bool single_column(int64_t n, int64_t ldx, const int64_t* offsets, int64_t segments) {
  return n == 1 && ldx == 1 && !offsets && segments == 1;
}

void spmv_rows(const sparseprop::SpmmArgs& a, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    int64_t k = a.indptr[r];
    const int64_t end = a.indptr[r + 1];
    Reg acc0 = Vec::zero(), acc1 = Vec::zero();
    for (; k + 2 * kW <= end; k += 2 * kW) {
      acc0 = Vec::fma(Vec::load(a.values + k), Vec::load_index_gather(a.x, a.indices + k), acc0);
      acc1 = Vec::fma(Vec::load(a.values + k + kW),
                      Vec::load_index_gather(a.x, a.indices + k + kW), acc1);
    }
    if (k + kW <= end) {
      acc0 = Vec::fma(Vec::load(a.values + k), Vec::load_index_gather(a.x, a.indices + k), acc0);
      k += kW;
    }
    float sum = Vec::hsum(Vec::add(acc0, acc1));
    for (; k < end; ++k) sum += a.values[k] * a.x[a.indices[k]];
    a.y[r * a.ldy] = (a.bias ? a.bias[r] : 0.0f) + sum;
  }
}

void sddmv_rows(const sparseprop::SddmmArgs& a, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    int64_t k = a.indptr[r];
    const int64_t end = a.indptr[r + 1];
    const float d = a.dy[r * a.lddy];
    const Reg dv = Vec::set1(d);
    for (; k + kW <= end; k += kW)
      Vec::store(a.out + k, Vec::mul(dv, Vec::load_index_gather(a.x, a.indices + k)));
    for (; k < end; ++k) a.out[k] = d * a.x[a.indices[k]];
  }
}

void spmm_rows(const sparseprop::SpmmArgs& a, int64_t r0, int64_t r1) {
  if (a.n == 0) return;
  if (single_column(a.n, a.ldx, a.offsets, a.segments)) {
    spmv_rows(a, r0, r1);
    return;
  }
  for (int64_t seg = 0; seg < a.segments; ++seg) {
    sparseprop::SpmmArgs s = a;
    s.x += seg * a.x_segment_stride;
    s.y += seg * a.y_segment_stride;
    for_each_block<Vec::spmm_block, SpmmBlock>(s, r0, r1, a.n);
  }
}

void sddmm_rows(const sparseprop::SddmmArgs& a, int64_t r0, int64_t r1) {
  if (a.n == 0 || a.segments == 0) {
    for (int64_t k = a.indptr[r0]; k < a.indptr[r1]; ++k) a.out[k] = 0.0f;
    return;
  }
  if (single_column(a.n, a.ldx, a.offsets, a.segments)) {
    sddmv_rows(a, r0, r1);
    return;
  }
  // The first block of the first segment writes the dot products; the rest add.
  constexpr int64_t step = int64_t(Vec::sddmm_block) * kW;
  for (int64_t seg = 0; seg < a.segments; ++seg) {
    for (int64_t c0 = 0; c0 < a.n; c0 += step) {
      sparseprop::SddmmArgs s = a;
      s.dy += seg * a.dy_segment_stride + c0;
      s.x += seg * a.x_segment_stride + c0;
      const int64_t len = min64(a.n - c0, step);
      if (seg == 0 && c0 == 0) for_each_block<Vec::sddmm_block, SddmmFirstBlock>(s, r0, r1, len);
      else for_each_block<Vec::sddmm_block, SddmmNextBlock>(s, r0, r1, len);
    }
  }
}
