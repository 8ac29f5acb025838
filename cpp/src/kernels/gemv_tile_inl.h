// Shared body of the x86 SIMD tile kernels (AVX2 and AVX-512 translation units).
// The including TU defines, before including this file:
//   VPTQ_GEMV_NS        namespace name for its copy of the templates
//   VPTQ_GEMV_RBS1_NV1  row blocks per register tile, batch 1, v <= 8
//   VPTQ_GEMV_RBSB_NV1  row blocks per register tile, batch >= 2, v <= 8
//   VPTQ_GEMV_RBS1_NV2  ... batch 1, 8 < v <= 16
//   VPTQ_GEMV_RBSB_NV2  ... batch >= 2, 8 < v <= 16
//   VPTQ_GEMV_BT        batch rows per register tile (batch >= 2)
// Each must divide the plan's rb (8 for v <= 8, 4 for v > 8).
// Works on 8-float ymm vectors: one codebook entry is NV = vp / 8 vectors. The
// AVX-512 TU compiles the same body with larger register tiles (AVX-512VL gives
// 32 vector registers).
#include <immintrin.h>

#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#include "kernels/gemv_kernels.h"

namespace vptq::detail::VPTQ_GEMV_NS {

/// Vector h (8 floats) of the entry at element offset off. The offset is added in the
/// pointer domain so that 8 * h folds into the address displacement.
template <CodebookStorage S>
inline __m256 load_entry8(const void* cb, std::size_t off, int h = 0) {
  if constexpr (S == CodebookStorage::F32) {
    return _mm256_loadu_ps(static_cast<const float*>(cb) + off + 8 * h);
  } else if constexpr (S == CodebookStorage::F16) {
    return _mm256_cvtph_ps(
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const std::uint16_t*>(cb) + off + 8 * h)));
  } else {
    const __m128i h16 =
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const std::uint16_t*>(cb) + off + 8 * h));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h16), 16));
  }
}

/// Vector h of the weight vector looked up at main offset off (+ residual offset roff): with a
/// residual codebook the entry sum is rounded to fp32 once, as in the dequantized matrix.
template <CodebookStorage S, bool RES>
inline __m256 weight8(const void* cb, std::size_t off, const void* rcb, std::size_t roff, int h) {
  __m256 C = load_entry8<S>(cb, off, h);
  if constexpr (RES) C = _mm256_add_ps(C, load_entry8<S>(rcb, roff, h));
  return C;
}

/// 16-bit field Q (0..3) of a 64-bit word, as a 64-bit value (a 32-bit one costs an
/// extra zero-extending mov before its use in an address).
template <int Q>
inline std::size_t field16(std::uint64_t w) {
  static_assert(Q >= 0 && Q < 4, "four 16-bit fields");
#if defined(__BMI2__)
  // A rotate is one non-destructive rorx; a shift would need a copy first.
  if constexpr (Q == 1 || Q == 2) return static_cast<std::uint16_t>((w >> (16 * Q)) | (w << (64 - 16 * Q)));
#endif
  return static_cast<std::uint16_t>(w >> (16 * Q));
}

/// f(std::integral_constant<int, i>{}) for i = 0 .. N-1, unrolled at compile time.
template <class F, int... I>
inline void static_for_impl(F&& f, std::integer_sequence<int, I...>) {
  (f(std::integral_constant<int, I>{}), ...);
}
template <int N, class F>
inline void static_for(F&& f) {
  static_for_impl(f, std::make_integer_sequence<int, N>{});
}

/// Loads min(RBS, 4) consecutive uint16 indices into the low bits of a 64-bit word.
template <int RBS>
inline std::uint64_t load_idx4(const std::uint16_t* p) {
  std::uint64_t w = 0;
  std::memcpy(&w, p, sizeof(std::uint16_t) * (RBS < 4 ? RBS : 4));
  return w;
}

/// Batch rows in register passes of 3 rows, and of 2 where 3 would leave a single row
/// (a 1-row pass costs nearly as much as a 3-row one): f(std::integral_constant<int, BT>, first row).
template <class F>
inline void row_passes(idx_t batch, F f) {
  for (idx_t b = 0; b < batch;) {
    const idx_t left = batch - b;
    if (left == 2 || left == 4) {
      f(std::integral_constant<int, 2>{}, b);
      b += 2;
    } else {
      f(std::integral_constant<int, 3>{}, b);
      b += 3;
    }
  }
}

/// One register tile: RBS row blocks starting at block r0, BT batch rows.
/// masks[h]: lanes of entry vector h that belong to the block (v lanes in total).
template <int NV, CodebookStorage S, bool RES, bool PRE, int RBS, int BT>
inline void tile_block(const TileArgs& a, int r0, const float* xs, idx_t ldx, float* acc, idx_t ld,
                       const __m256i* masks) {
  constexpr int VP = 8 * NV;
  const int v = a.v;
  const int rb = a.rb;
  // All loops over the register tile are fully unrolled so that A lives in registers.
  __m256 A[BT][RBS][NV];
#pragma GCC unroll 4
  for (int b = 0; b < BT; ++b)
#pragma GCC unroll 16
    for (int r = 0; r < RBS; ++r)
#pragma GCC unroll 2
      for (int h = 0; h < NV; ++h)
        A[b][r][h] = _mm256_maskload_ps(acc + b * ld + (r0 + r) * v + 8 * h, masks[h]);
  const std::uint16_t* ip = a.idx + r0;
  const std::uint16_t* rp = RES ? a.ridx + r0 : nullptr;
  const void* cb = a.cb;
  const void* rcb = a.rcb;
  const idx_t cols = a.cols;
  for (idx_t c = 0; c < cols; ++c) {
    __m256 X[BT];
#pragma GCC unroll 4
    for (int b = 0; b < BT; ++b) X[b] = _mm256_broadcast_ss(xs + b * ldx + c);
    // Indices are read 4 at a time (one 64-bit load, fields extracted in registers):
    // this trades load-port pressure for cheap ALU work.
    constexpr int NW = (RBS + 3) / 4;
    std::uint64_t w[NW], rw[NW];
#pragma GCC unroll 4
    for (int q = 0; q < NW; ++q) {
      w[q] = load_idx4<RBS>(ip + 4 * q);
      if constexpr (RES) rw[q] = load_idx4<RBS>(rp + 4 * q);
    }
    static_for<RBS>([&](auto rc) {
      constexpr int r = decltype(rc)::value;
      const std::size_t i0 = field16<r % 4>(w[r / 4]);
      const std::size_t off = PRE ? i0 : i0 * VP;
      std::size_t roff = 0;
      if constexpr (RES) {
        const std::size_t i1 = field16<r % 4>(rw[r / 4]);
        roff = PRE ? i1 : i1 * VP;
      }
#pragma GCC unroll 2
      for (int h = 0; h < NV; ++h) {
        // With a residual codebook the weight vector is formed first, then multiplied:
        // one FMA per entry instead of two, and one accumulator per block.
        const __m256 C = weight8<S, RES>(cb, off, rcb, roff, h);
#pragma GCC unroll 4
        for (int b = 0; b < BT; ++b) A[b][r][h] = _mm256_fmadd_ps(X[b], C, A[b][r][h]);
      }
    });
    ip += rb;
    if constexpr (RES) rp += rb;
  }

#pragma GCC unroll 4
  for (int b = 0; b < BT; ++b)
#pragma GCC unroll 16
    for (int r = 0; r < RBS; ++r)
#pragma GCC unroll 2
      for (int h = 0; h < NV; ++h) _mm256_maskstore_ps(acc + b * ld + (r0 + r) * v + 8 * h, masks[h], A[b][r][h]);
}

template <int NV, CodebookStorage S, bool RES, bool PRE, int RBS, int BT>
inline void tile_rows(const TileArgs& a, const float* xs, idx_t ldx, float* acc, idx_t ld,
                      const __m256i* masks) {
  for (int r0 = 0; r0 < a.rb; r0 += RBS) tile_block<NV, S, RES, PRE, RBS, BT>(a, r0, xs, ldx, acc, ld, masks);
}

/// Batches: the lookups are the expensive part (index extraction, a codebook load
/// that may miss L1, fp16 conversion, the residual add), so the looked-up weight
/// vectors of kBufCols columns x rb blocks are written once into an L1-resident
/// buffer and every batch row reads them from there. The per-output summation order
/// is exactly that of the direct kernel (sequential in c), so results are identical.
constexpr int kBufCols = 32;

/// buf [nc][rb][VP] <- weight vectors (main + residual) of columns [c0, c0 + nc).
template <int NV, CodebookStorage S, bool RES, bool PRE>
inline void fill_buf(const TileArgs& a, idx_t c0, idx_t nc, float* buf) {
  constexpr int VP = 8 * NV;
  const int rb = a.rb;
  const std::uint16_t* ip = a.idx + c0 * rb;
  const std::uint16_t* rp = RES ? a.ridx + c0 * rb : nullptr;
  for (idx_t i = 0; i < nc * rb; ++i) {
    const std::uint32_t off = PRE ? ip[i] : static_cast<std::uint32_t>(ip[i]) * VP;
    std::uint32_t roff = 0;
    if constexpr (RES) roff = PRE ? rp[i] : static_cast<std::uint32_t>(rp[i]) * VP;
#pragma GCC unroll 2
    for (int h = 0; h < NV; ++h) {
      _mm256_store_ps(buf + i * VP + 8 * h, weight8<S, RES>(a.cb, off, a.rcb, roff, h));
    }
  }
}

/// Register tile over a filled buffer: RBS blocks from r0, BT batch rows, nc columns.
/// accp: padded accumulators [BT][ldp], block r at accp[b*ldp + r*VP] (plain aligned
/// loads/stores: masked ones are microcoded and slow on AMD cores).
template <int NV, int RBS, int BT>
inline void buf_block(const float* buf, int rb, idx_t nc, int r0, const float* xt, idx_t ldc, float* accp,
                      idx_t ldp) {
  constexpr int VP = 8 * NV;
  __m256 A[BT][RBS][NV];
#pragma GCC unroll 4
  for (int b = 0; b < BT; ++b)
#pragma GCC unroll 16
    for (int r = 0; r < RBS; ++r)
#pragma GCC unroll 2
      for (int h = 0; h < NV; ++h) A[b][r][h] = _mm256_load_ps(accp + b * ldp + (r0 + r) * VP + 8 * h);
  for (idx_t c = 0; c < nc; ++c) {
    __m256 X[BT];
#pragma GCC unroll 4
    for (int b = 0; b < BT; ++b) X[b] = _mm256_broadcast_ss(xt + c * ldc + b);
    const float* e = buf + (c * rb + r0) * VP;
#pragma GCC unroll 16
    for (int r = 0; r < RBS; ++r)
#pragma GCC unroll 2
      for (int h = 0; h < NV; ++h) {
        const __m256 C = _mm256_load_ps(e + r * VP + 8 * h);
#pragma GCC unroll 4
        for (int b = 0; b < BT; ++b) A[b][r][h] = _mm256_fmadd_ps(X[b], C, A[b][r][h]);
      }
  }
#pragma GCC unroll 4
  for (int b = 0; b < BT; ++b)
#pragma GCC unroll 16
    for (int r = 0; r < RBS; ++r)
#pragma GCC unroll 2
      for (int h = 0; h < NV; ++h) _mm256_store_ps(accp + b * ldp + (r0 + r) * VP + 8 * h, A[b][r][h]);
}

template <int NV, int RBS, int BT>
inline void buf_rows(const float* buf, int rb, idx_t nc, const float* xt, idx_t ldc, float* accp, idx_t ldp) {
  for (int r0 = 0; r0 < rb; r0 += RBS) buf_block<NV, RBS, BT>(buf, rb, nc, r0, xt, ldc, accp, ldp);
}

/// Buffered form for batches (see fill_buf); same summation order as the direct kernel.
template <int NV, CodebookStorage S, bool RES, bool PRE, int RBSB>
void buffered_impl(const TileArgs& a, const float* xs, idx_t ldx, idx_t batch, float* acc, idx_t ld) {
  constexpr int VP = 8 * NV;
  constexpr idx_t ldp = 64;  // rb * VP floats per batch row
  static_assert(8 * 8 == 4 * 16, "rb * vp is 64 floats for both entry widths");
  const int rb = a.rb, v = a.v;
  alignas(64) float buf[kBufCols * 64];  // [kBufCols][rb][VP]
  aligned_vector<float> accp(static_cast<std::size_t>(batch * ldp), 0.0f);
  // The chunk's activations transposed to [kBufCols][batch]: batch rows of xs are N
  // floats apart, which for N a multiple of 1024 maps them all to one L1 set.
  aligned_vector<float> xt(static_cast<std::size_t>(kBufCols * batch));
  for (idx_t b = 0; b < batch; ++b)
    for (int r = 0; r < rb; ++r)
      for (int l = 0; l < v; ++l) accp[static_cast<std::size_t>(b * ldp + r * VP + l)] = acc[b * ld + r * v + l];
  for (idx_t c0 = 0; c0 < a.cols; c0 += kBufCols) {
    const idx_t nc = a.cols - c0 < kBufCols ? a.cols - c0 : kBufCols;
    fill_buf<NV, S, RES, PRE>(a, c0, nc, buf);
    for (idx_t b = 0; b < batch; ++b)
      for (idx_t c = 0; c < nc; ++c) xt[static_cast<std::size_t>(c * batch + b)] = xs[b * ldx + c0 + c];
    row_passes(batch, [&](auto bt, idx_t b) {
      buf_rows<NV, RBSB, decltype(bt)::value>(buf, rb, nc, xt.data() + b, batch, accp.data() + b * ldp, ldp);
    });
  }
  for (idx_t b = 0; b < batch; ++b)
    for (int r = 0; r < rb; ++r)
      for (int l = 0; l < v; ++l) acc[b * ld + r * v + l] = accp[static_cast<std::size_t>(b * ldp + r * VP + l)];
}

/// Chunk q of a codebook: q * elems entries of the storage type further.
template <CodebookStorage S>
inline const void* chunk_ptr(const void* cb, idx_t q, idx_t elems) {
  constexpr std::size_t eb = S == CodebookStorage::F32 ? sizeof(float) : sizeof(std::uint16_t);
  return static_cast<const char*>(cb) + static_cast<std::size_t>(q * elems) * eb;
}

/// Entry l of a sorted round, read with a single load. Loads are the scarce resource of
/// the sorted kernel (entry, broadcast of x, codebook vector per lookup), and GCC would
/// otherwise load the entry once per field. PAIR: entries l and l + 1 come from one 64-bit
/// load at even l, fewer loads for more ALU work; measured a gain at batch 1 and a loss in
/// the batch passes, where the register tile leaves GCC fewer registers.
template <bool PAIR>
inline std::uint32_t sorted_entry(const std::uint32_t* e, int l, std::uint64_t& pair) {
  if constexpr (PAIR) {
    if (l % 2 == 0) {
      std::memcpy(&pair, e + l, sizeof(pair));
      asm("" : "+r"(pair));
    }
    return l % 2 == 0 ? static_cast<std::uint32_t>(pair) : static_cast<std::uint32_t>(pair >> 32);
  } else {
    std::uint32_t w = e[l];
    asm("" : "+r"(w));
    return w;
  }
}

/// Sorted sections (SortedLayout): lists [l0, l0 + SG) of group g, BT batch rows. One
/// accumulator chain per list and row; each list's sum is added to its block when it ends.
template <int NV, CodebookStorage S, bool RES, bool RPRE, int SG, int BT>
inline void sorted_pass(const TileArgs& a, const void* cbq, std::uint32_t g, int l0, const float* xs, idx_t ldx,
                        float* acc, idx_t ld, const __m256i* masks) {
  constexpr int VP = 8 * NV;
  const int G = a.G;
  __m256 A[BT][SG][NV];
#pragma GCC unroll 4
  for (int b = 0; b < BT; ++b)
#pragma GCC unroll 8
    for (int l = 0; l < SG; ++l)
#pragma GCC unroll 2
      for (int h = 0; h < NV; ++h) A[b][l][h] = _mm256_setzero_ps();
  const std::uint32_t r0 = a.gfirst[g], r1 = a.gfirst[g + 1];
  const std::uint32_t* e = a.ent + static_cast<std::size_t>(r0) * G + l0;
  const std::uint16_t* re = RES ? a.rent + static_cast<std::size_t>(r0) * G + l0 : nullptr;
  const void* rcb = a.rcb;
  for (std::uint32_t r = r0; r < r1; ++r) {
    std::uint64_t pair = 0;
#pragma GCC unroll 8
    for (int l = 0; l < SG; ++l) {
      const std::uint32_t w = sorted_entry<(BT == 1 && SG % 2 == 0)>(e, l, pair);
      const float* xc = xs + sorted_col(w);
      const std::uint32_t off = sorted_off(w);
      std::uint32_t roff = 0;
      if constexpr (RES) roff = RPRE ? re[l] : static_cast<std::uint32_t>(re[l]) * VP;
#pragma GCC unroll 2
      for (int h = 0; h < NV; ++h) {
        const __m256 C = weight8<S, RES>(cbq, off, rcb, roff, h);
#pragma GCC unroll 4
        for (int b = 0; b < BT; ++b) A[b][l][h] = _mm256_fmadd_ps(_mm256_broadcast_ss(xc + b * ldx), C, A[b][l][h]);
      }
    }
    e += G;
    if constexpr (RES) re += G;
  }
  const int v = a.v;
#pragma GCC unroll 8
  for (int l = 0; l < SG; ++l) {
    const idx_t blk = a.gblk[static_cast<std::size_t>(g) * G + l0 + l];
#pragma GCC unroll 4
    for (int b = 0; b < BT; ++b)
#pragma GCC unroll 2
      for (int h = 0; h < NV; ++h) {
        float* o = acc + b * ld + blk * v + 8 * h;
        if (v == VP) {
          _mm256_storeu_ps(o, _mm256_add_ps(_mm256_loadu_ps(o), A[b][l][h]));
        } else {
          _mm256_maskstore_ps(o, masks[h], _mm256_add_ps(_mm256_maskload_ps(o, masks[h]), A[b][l][h]));
        }
      }
  }
}

/// Sorted sections: every chunk's groups, in passes of SG lists x BT rows.
template <int NV, CodebookStorage S, bool RES, bool RPRE, int SG, int BT>
inline void sorted_rows(const TileArgs& a, const float* xs, idx_t ldx, float* acc, idx_t ld, const __m256i* masks) {
  for (idx_t q = 0; q < a.num_chunks; ++q) {
    const void* cbq = chunk_ptr<S>(a.cb, q, a.chunk_elems);
    for (std::uint32_t g = a.gstart[q]; g < a.gstart[q + 1]; ++g)
      for (int l0 = 0; l0 < a.G; l0 += SG) sorted_pass<NV, S, RES, RPRE, SG, BT>(a, cbq, g, l0, xs, ldx, acc, ld, masks);
  }
}

template <int NV, CodebookStorage S, bool RES, bool RPRE>
void sorted_impl(const TileArgs& a, const float* xs, idx_t ldx, idx_t batch, float* acc, idx_t ld,
                 const __m256i* masks) {
  constexpr int SG1 = NV == 1 ? 8 : 4;  // = G: a whole group per pass
  constexpr int SGB = NV == 1 ? VPTQ_GEMV_RBSB_NV1 : VPTQ_GEMV_RBSB_NV2;
  if (batch == 1) {
    sorted_rows<NV, S, RES, RPRE, SG1, 1>(a, xs, ldx, acc, ld, masks);
    return;
  }
  row_passes(batch, [&](auto bt, idx_t b) {
    sorted_rows<NV, S, RES, RPRE, SGB, decltype(bt)::value>(a, xs + b * ldx, ldx, acc + b * ld, ld, masks);
  });
}

template <int NV, CodebookStorage S, bool RES, bool PRE>
void tile_impl(const TileArgs& a, const float* xs, idx_t ldx, idx_t batch, float* acc, idx_t ld) {
  constexpr int RBS1 = NV == 1 ? VPTQ_GEMV_RBS1_NV1 : VPTQ_GEMV_RBS1_NV2;
  constexpr int RBSB = NV == 1 ? VPTQ_GEMV_RBSB_NV1 : VPTQ_GEMV_RBSB_NV2;
  constexpr int BT = VPTQ_GEMV_BT;
  __m256i masks[NV];
  for (int h = 0; h < NV; ++h) {
    const int n = a.v - 8 * h;  // valid lanes in this vector (>= 1 since v > 8 * (NV - 1))
    masks[h] = _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static_assert(BT == 3, "batch decomposition below assumes register tiles of 3 (and 2) rows");
  if (a.sorted) {
    sorted_impl<NV, S, RES, PRE>(a, xs, ldx, batch, acc, ld, masks);
    return;
  }
  if (batch == 1) {
    tile_rows<NV, S, RES, PRE, RBS1, 1>(a, xs, ldx, acc, ld, masks);
    return;
  }
  if (a.buf_min_batch > 0 && batch >= a.buf_min_batch) {
    buffered_impl<NV, S, RES, PRE, RBSB>(a, xs, ldx, batch, acc, ld);
    return;
  }
  row_passes(batch, [&](auto bt, idx_t b) {
    tile_rows<NV, S, RES, PRE, RBSB, decltype(bt)::value>(a, xs + b * ldx, ldx, acc + b * ld, ld, masks);
  });
}

template <int NV, CodebookStorage S>
void tile_dispatch_res(const TileArgs& a, const float* xs, idx_t ldx, idx_t batch, float* acc, idx_t ld) {
  if (a.premul) {
    if (a.rcb != nullptr)
      tile_impl<NV, S, true, true>(a, xs, ldx, batch, acc, ld);
    else
      tile_impl<NV, S, false, true>(a, xs, ldx, batch, acc, ld);
  } else {
    if (a.rcb != nullptr)
      tile_impl<NV, S, true, false>(a, xs, ldx, batch, acc, ld);
    else
      tile_impl<NV, S, false, false>(a, xs, ldx, batch, acc, ld);
  }
}

template <int NV>
void tile_dispatch_storage(const TileArgs& a, const float* xs, idx_t ldx, idx_t batch, float* acc,
                           idx_t ld) {
  switch (a.storage) {
    case CodebookStorage::F32:
      tile_dispatch_res<NV, CodebookStorage::F32>(a, xs, ldx, batch, acc, ld);
      break;
    case CodebookStorage::F16:
      tile_dispatch_res<NV, CodebookStorage::F16>(a, xs, ldx, batch, acc, ld);
      break;
    case CodebookStorage::BF16:
      tile_dispatch_res<NV, CodebookStorage::BF16>(a, xs, ldx, batch, acc, ld);
      break;
  }
}

template <int NV, CodebookStorage S, bool RES, bool PRE>
void dequant_t_impl(const TileArgs& a, float* qt, idx_t ldq) {
  constexpr int VP = 8 * NV;
  __m256i masks[NV];
  for (int h = 0; h < NV; ++h)
    masks[h] = _mm256_cmpgt_epi32(_mm256_set1_epi32(a.v - 8 * h), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  const int rb = a.rb, v = a.v;
  if (a.sorted) {
    // Chunk by chunk, the lists of blocks [blk_lo, blk_hi) (the caller keeps that range
    // small, so the scattered writes stay within few pages of qt).
    for (idx_t q = 0; q < a.num_chunks; ++q) {
      const void* cbq = chunk_ptr<S>(a.cb, q, a.chunk_elems);
      for (std::uint32_t g = a.gstart[q]; g < a.gstart[q + 1]; ++g)
        for (int l = 0; l < a.G; ++l) {
          const idx_t blk = a.gblk[static_cast<std::size_t>(g) * a.G + l];
          if (blk < a.blk_lo || blk >= a.blk_hi) continue;
          float* ob = qt + (blk - a.blk_lo) * v;
          for (std::size_t e = a.gfirst[g] * static_cast<std::size_t>(a.G) + static_cast<std::size_t>(l);
               e < a.gfirst[g + 1] * static_cast<std::size_t>(a.G); e += static_cast<std::size_t>(a.G)) {
            const std::uint32_t w = a.ent[e];
            if (sorted_col(w) == a.dummy_col) continue;
            float* o = ob + static_cast<idx_t>(sorted_col(w)) * ldq;
            const std::uint32_t roff = !RES ? 0 : PRE ? a.rent[e] : static_cast<std::uint32_t>(a.rent[e]) * VP;
#pragma GCC unroll 2
            for (int h = 0; h < NV; ++h)
              _mm256_maskstore_ps(o + 8 * h, masks[h], weight8<S, RES>(cbq, sorted_off(w), a.rcb, roff, h));
          }
        }
    }
    return;
  }
  for (idx_t c = 0; c < a.cols; ++c) {
    const std::uint16_t* ip = a.idx + c * rb;
    const std::uint16_t* rp = RES ? a.ridx + c * rb : nullptr;
    float* o = qt + c * ldq;
    for (int r = 0; r < rb; ++r) {
      const std::uint32_t off = PRE ? ip[r] : static_cast<std::uint32_t>(ip[r]) * VP;
      const std::uint32_t roff = !RES ? 0 : PRE ? rp[r] : static_cast<std::uint32_t>(rp[r]) * VP;
#pragma GCC unroll 2
      for (int h = 0; h < NV; ++h)
        _mm256_maskstore_ps(o + r * v + 8 * h, masks[h], weight8<S, RES>(a.cb, off, a.rcb, roff, h));
    }
  }
}

template <int NV, CodebookStorage S>
void dequant_t_res(const TileArgs& a, float* qt, idx_t ldq) {
  if (a.premul) {
    if (a.rcb != nullptr)
      dequant_t_impl<NV, S, true, true>(a, qt, ldq);
    else
      dequant_t_impl<NV, S, false, true>(a, qt, ldq);
  } else {
    if (a.rcb != nullptr)
      dequant_t_impl<NV, S, true, false>(a, qt, ldq);
    else
      dequant_t_impl<NV, S, false, false>(a, qt, ldq);
  }
}

template <int NV>
void dequant_t_storage(const TileArgs& a, float* qt, idx_t ldq) {
  switch (a.storage) {
    case CodebookStorage::F32:
      dequant_t_res<NV, CodebookStorage::F32>(a, qt, ldq);
      break;
    case CodebookStorage::F16:
      dequant_t_res<NV, CodebookStorage::F16>(a, qt, ldq);
      break;
    case CodebookStorage::BF16:
      dequant_t_res<NV, CodebookStorage::BF16>(a, qt, ldq);
      break;
  }
}

inline void dequant_t(const TileArgs& a, float* qt, idx_t ldq) {
  if (a.vp == 8)
    dequant_t_storage<1>(a, qt, ldq);
  else
    dequant_t_storage<2>(a, qt, ldq);
}

/// Histogram kernel body (see gemv_kernels.h); NB = ldt / 8 vectors per histogram row.
/// Two row blocks (r, r + 1) are scattered together into separate histograms so that
/// their load-add-store chains interleave.
template <int NB, bool PRE>
void hist_two(const float* cb, idx_t k, const std::uint16_t* ip, int rb, idx_t cols, const float* xst, float* H,
              float* out /*[2][v][8 * NB]*/, int v) {
  constexpr int W = 8 * NB;
  float* H0 = H;
  float* H1 = H + k * W;
  for (idx_t i = 0; i < 2 * k * W; i += 8) _mm256_storeu_ps(H + i, _mm256_setzero_ps());
  for (idx_t c = 0; c < cols; ++c) {
    const std::uint32_t e0 = PRE ? static_cast<std::uint32_t>(ip[c * rb]) >> 3 : ip[c * rb];  // vp == 8
    const std::uint32_t e1 = PRE ? static_cast<std::uint32_t>(ip[c * rb + 1]) >> 3 : ip[c * rb + 1];
    float* h0 = H0 + static_cast<idx_t>(e0) * W;
    float* h1 = H1 + static_cast<idx_t>(e1) * W;
    const float* xc = xst + c * W;
#pragma GCC unroll 2
    for (int j = 0; j < NB; ++j) {
      const __m256 xv = _mm256_loadu_ps(xc + 8 * j);
      _mm256_storeu_ps(h0 + 8 * j, _mm256_add_ps(_mm256_loadu_ps(h0 + 8 * j), xv));
      _mm256_storeu_ps(h1 + 8 * j, _mm256_add_ps(_mm256_loadu_ps(h1 + 8 * j), xv));
    }
  }
  // out[q][l][b] = Σ_k cb[k][l] · Hq[k, b]
  for (int q = 0; q < 2; ++q) {
    const float* Hq = H + q * k * W;
    for (int j = 0; j < NB; ++j) {
      __m256 A[8];
#pragma GCC unroll 8
      for (int l = 0; l < 8; ++l) A[l] = _mm256_setzero_ps();
      for (idx_t kk = 0; kk < k; ++kk) {
        const __m256 h = _mm256_loadu_ps(Hq + kk * W + 8 * j);
        const float* e = cb + kk * 8;
#pragma GCC unroll 8
        for (int l = 0; l < 8; ++l) A[l] = _mm256_fmadd_ps(_mm256_broadcast_ss(e + l), h, A[l]);
      }
#pragma GCC unroll 8
      for (int l = 0; l < 8; ++l)
        if (l < v) _mm256_storeu_ps(out + (q * 8 + l) * W + 8 * j, A[l]);
    }
  }
}

template <int NB, bool PRE>
void hist_impl(const TileArgs& a, const float* xst, idx_t batch, float* acc, idx_t ld, float* scratch) {
  constexpr int W = 8 * NB;
  const int v = a.v, rb = a.rb;
  alignas(32) float outm[2 * 8 * W];
  alignas(32) float outr[2 * 8 * W];
  const float* cb = static_cast<const float*>(a.cb);
  const float* rcb = static_cast<const float*>(a.rcb);
  for (int r = 0; r < rb; r += 2) {  // rb is even (8)
    hist_two<NB, PRE>(cb, a.k, a.idx + r, rb, a.cols, xst, scratch, outm, v);
    if (rcb != nullptr) hist_two<NB, PRE>(rcb, a.kr, a.ridx + r, rb, a.cols, xst, scratch, outr, v);
    for (int q = 0; q < 2; ++q)
      for (idx_t b = 0; b < batch; ++b) {
        float* o = acc + b * ld + (r + q) * v;
        for (int l = 0; l < v; ++l) {
          float y = o[l] + outm[(q * 8 + l) * W + b];
          if (rcb != nullptr) y += outr[(q * 8 + l) * W + b];
          o[l] = y;
        }
      }
  }
}

inline void hist(const TileArgs& a, const float* xst, idx_t ldt, idx_t batch, float* acc, idx_t ld,
                 float* scratch) {
  if (ldt == 8) {
    if (a.premul)
      hist_impl<1, true>(a, xst, batch, acc, ld, scratch);
    else
      hist_impl<1, false>(a, xst, batch, acc, ld, scratch);
  } else {
    if (a.premul)
      hist_impl<2, true>(a, xst, batch, acc, ld, scratch);
    else
      hist_impl<2, false>(a, xst, batch, acc, ld, scratch);
  }
}

inline void tile(const TileArgs& a, const float* xs, idx_t ldx, idx_t batch, float* acc, idx_t ld) {
  if (a.vp == 8)
    tile_dispatch_storage<1>(a, xs, ldx, batch, acc, ld);
  else
    tile_dispatch_storage<2>(a, xs, ldx, batch, acc, ld);
}

}  // namespace vptq::detail::VPTQ_GEMV_NS
