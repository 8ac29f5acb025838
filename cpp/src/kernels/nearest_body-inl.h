// Private: the fused nearest-centroid kernel body shared by the per-ISA translation
// units (nearest_avx2.cpp, nearest_avx512.cpp; a portable 16-lane emulation in the tests).
// Include only from a TU compiled with the matching ISA flags; `V` is a traits struct:
//   reg, W (lanes), kPinLoads (reg fits an asm "v" operand), load(p), set1(v),
//   bcast(p) (= set1(*p) from memory), fmadd(a, b, c) = a*b + c, fma1(a, b, c) (scalar,
//   rounded like one lane of fmadd), min(a, b), any_lt(a, b) / any_le(a, b) (some lane of
//   a < / <= b), hmin(a) (min over lanes), eq_mask(a, b) (bit l set iff lane l of a == b).
//
// Algorithm, per query q and per chunk of 4 registers (4*W centroids):
//   acc_u = ||c||² + Σ_j c_j * (-2 q_j)          (4 independent FMA chains)
//   m     = lane-wise min of acc_0..acc_3
//   if any lane of m < best (broadcast): best = min over lanes of m, index = lowest lane
//   of acc_0..acc_3 equal to it (bit scan of the 4 compare masks).
// The running best rarely improves (O(log k) times per query), so the common path is
// 4*d FMAs + 3 min + 1 compare per 4*W centroids. Ties: strict '<' in index order keeps
// the lowest index. Centroids are walked in tiles that fit in L1, with a block of
// queries per tile (the best per query carried over between tiles), and QN queries
// share each centroid load.
//
// Hinted variant (search_hinted_fixed): the layout is sorted by ||c|| (perm maps positions
// to original indices); each query scans only the positions whose norm can beat its hint
// (nearest_hint_range) and starts from the hint's score, with '<=' and lowest original
// index on equal scores. Queries of a block are ordered by range and paired (union range).
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "kernels/nearest_kernels.h"

namespace vptq::kernels::nearest_body {

// Under AddressSanitizer the unrolled chunk loop is not instrumented load by load (that made
// these TUs take minutes to compile); instead each chunk's contiguous span of the layout is
// probed at both ends by check_span, which the sanitizer does instrument.
#if defined(__SANITIZE_ADDRESS__)
#define VPTQ_NEAREST_TILE_ATTR __attribute__((no_sanitize_address, noinline))
template <class T>
inline void check_span(const T* p, idx_t n) {
  volatile T sink = p[0];
  sink = p[n - 1];
  (void)sink;
}
#else
#define VPTQ_NEAREST_TILE_ATTR
template <class T>
inline void check_span(const T*, idx_t) {}
#endif

template <class V, int D, int QN, bool kHint = false>
VPTQ_NEAREST_TILE_ATTR inline void run_tile(const NearestCodebook& cb, const float* qs /*[QN, D] = -2 x, zero padded*/, idx_t c_begin,
                     idx_t c_end,
                     float* best /*[QN] in/out*/, std::int32_t* besti /*[QN] in/out*/) {
  using reg = typename V::reg;
  constexpr int W = V::W;
  constexpr int CH = 4 * W;
  constexpr int B = kNearestBlock;
  // QN == 1: the query lives in D broadcast registers. QN > 1: registers are short, so the
  // (pre-scaled) query coordinates are re-broadcast from memory, which costs a load uop but
  // lets QN queries share each centroid load.
  constexpr int QR = QN == 1 ? D : 1;
  reg qb[QR];
  reg bv[QN];
#pragma GCC unroll 4
  for (int qi = 0; qi < QN; ++qi) bv[qi] = V::set1(best[qi]);
  if constexpr (QN == 1) {
#pragma GCC unroll 16
    for (int j = 0; j < D; ++j) qb[j] = V::set1(qs[j]);
  }
  check_span(cb.cb + (c_begin / B) * D * B, (c_end - c_begin) * D);
  check_span(cb.norms + c_begin, c_end - c_begin);
  if constexpr (kHint) check_span(cb.perm + c_begin, c_end - c_begin);
  for (idx_t c0 = c_begin; c0 < c_end; c0 += CH) {
    const float* base = cb.cb + (c0 / B) * D * B;
    reg acc[QN][4];
#pragma GCC unroll 4
    for (int u = 0; u < 4; ++u) {
      const reg nr = V::load(cb.norms + c0 + u * W);
#pragma GCC unroll 4
      for (int qi = 0; qi < QN; ++qi) acc[qi][u] = nr;
    }
#pragma GCC unroll 16
    for (int j = 0; j < D; ++j) {
      reg qv[QN];
#pragma GCC unroll 4
      for (int qi = 0; qi < QN; ++qi) {
        if constexpr (QN == 1)
          qv[qi] = qb[j];
        else
          qv[qi] = V::bcast(qs + qi * D + j);
      }
#pragma GCC unroll 4
      for (int u = 0; u < 4; ++u) {
        reg c = V::load(base + ((u * W) / B) * D * B + j * B + (u * W) % B);
        // Keep the centroid in a register shared by the QN queries (otherwise GCC folds a
        // separate load into each FMA, doubling the load traffic this blocking removes).
        if constexpr (QN > 1 && V::kPinLoads) asm("" : "+v"(c));
#pragma GCC unroll 4
        for (int qi = 0; qi < QN; ++qi) acc[qi][u] = V::fmadd(c, qv[qi], acc[qi][u]);
      }
    }
#pragma GCC unroll 4
    for (int qi = 0; qi < QN; ++qi) {
      const reg m = V::min(V::min(acc[qi][0], acc[qi][1]), V::min(acc[qi][2], acc[qi][3]));
      if constexpr (!kHint) {
        if (V::any_lt(m, bv[qi])) {
          // Some centroid of the chunk beats the running best: the chunk minimum (one of the
          // scores) and the lowest index holding it are what a strict '<' scan gives.
          const float mv = V::hmin(m);
          const reg mvv = V::set1(mv);
          std::uint64_t mask = 0;
#pragma GCC unroll 4
          for (int u = 0; u < 4; ++u)
            mask |= static_cast<std::uint64_t>(V::eq_mask(acc[qi][u], mvv)) << (u * W);
          best[qi] = mv;
          besti[qi] = static_cast<std::int32_t>(c0 + __builtin_ctzll(mask));
          bv[qi] = mvv;
        }
      } else {
        // Permuted layout, best seeded with the hint's score: equal scores may come in any
        // order, so take '<=' and keep the lowest original index among equal minima.
        if (V::any_le(m, bv[qi])) {
          const float mv = V::hmin(m);
          const reg mvv = V::set1(mv);
          std::uint64_t mask = 0;
#pragma GCC unroll 4
          for (int u = 0; u < 4; ++u)
            mask |= static_cast<std::uint64_t>(V::eq_mask(acc[qi][u], mvv)) << (u * W);
          std::int32_t bi = cb.perm[c0 + __builtin_ctzll(mask)];
          for (mask &= mask - 1; mask; mask &= mask - 1) bi = std::min(bi, cb.perm[c0 + __builtin_ctzll(mask)]);
          if (mv < best[qi]) {
            best[qi] = mv;
            besti[qi] = bi;
            bv[qi] = mvv;
          } else {
            besti[qi] = std::min(besti[qi], bi);
          }
        }
      }
    }
  }
}

/// Copies queries x[rows, dq] as -2 x into q[rows, D], zero padded (padding adds exact zeros).
template <int D>
inline void load_queries(const float* x, int dq, idx_t rows, float* q) {
  for (idx_t r = 0; r < rows; ++r) {
    for (int j = 0; j < dq; ++j) q[r * D + j] = -2.0f * x[r * dq + j];
    for (int j = dq; j < D; ++j) q[r * D + j] = 0.0f;
  }
}

template <class V, int D, int QN>
void search_fixed(const NearestCodebook& cb, const float* x /*[n, cb.dq]*/, idx_t n, std::int32_t* idx /*[n]*/) {
  constexpr int CH = 4 * V::W;
  constexpr idx_t QB = 128;  // queries per pass over the centroid tiles (multiple of QN)
  // Centroid tile kept in L1: (D + 1) floats per centroid, ~16 KB.
  constexpr idx_t T = std::max<idx_t>(CH, (16384 / ((D + 1) * 4)) / CH * CH);
  alignas(64) float qbuf[QB * D];
  float best[QB];
  std::int32_t besti[QB];
  for (idx_t q0 = 0; q0 < n; q0 += QB) {
    const idx_t nq = std::min(QB, n - q0);
    const idx_t nr = (nq + QN - 1) / QN * QN;  // a ragged tail repeats the last query
    load_queries<D>(x + q0 * cb.dq, cb.dq, nq, qbuf);
    for (idx_t q = nq; q < nr; ++q) std::copy(qbuf + (nq - 1) * D, qbuf + nq * D, qbuf + q * D);
    for (idx_t q = 0; q < nr; ++q) {
      best[q] = std::numeric_limits<float>::infinity();
      besti[q] = 0;
    }
    for (idx_t t0 = 0; t0 < cb.kpad; t0 += T) {
      const idx_t t1 = std::min(cb.kpad, t0 + T);
      for (idx_t q = 0; q < nr; q += QN) run_tile<V, D, QN>(cb, qbuf + q * D, t0, t1, best + q, besti + q);
    }
    std::copy(besti, besti + nq, idx + q0);
  }
}

template <class V, int D, int QN>
void search_hinted_fixed(const NearestCodebook& cb, const NearestHintData& h, const float* x /*[n, cb.dq]*/, idx_t n,
                         const std::int32_t* hint /*[n]*/, std::int32_t* idx /*[n]*/) {
  constexpr int CH = 4 * V::W;
  constexpr idx_t QB = 128;
  constexpr idx_t T = std::max<idx_t>(CH, (16384 / ((D + 1) * 4)) / CH * CH);
  alignas(64) float xs[QB * D];  // block queries in range order, as -2 x zero padded
  float bs[QB];
  std::int32_t bis[QB];
  idx_t lo[QB], hi[QB];
  int order[QB];
  for (idx_t q0 = 0; q0 < n; q0 += QB) {
    const idx_t nq = std::min(QB, n - q0);
    const idx_t nr = (nq + QN - 1) / QN * QN;
    // Ranges (CH aligned) and range order of the block, then queries gathered in that order.
    nearest_hint_block(h, cb, CH, x + q0 * cb.dq, nq, hint + q0, lo, hi, order);
    for (idx_t p = 0; p < nr; ++p) {
      const int q = order[std::min(p, nq - 1)];
      const float* xq = x + (q0 + q) * cb.dq;
      const std::int32_t hq = hint[q0 + q];
      load_queries<D>(xq, cb.dq, 1, xs + p * D);
      // The hint's score in the kernel's own arithmetic (same FMA chain as a lane; the zero
      // padding of a lane adds exact zeros).
      float sc = h.norm2[hq];
      for (int j = 0; j < cb.dq; ++j) sc = V::fma1(h.c[idx_t{hq} * cb.dq + j], -2.0f * xq[j], sc);
      bs[p] = sc;
      bis[p] = hq;
    }
    for (idx_t t0 = 0; t0 < cb.kpad; t0 += T) {
      const idx_t t1 = std::min(cb.kpad, t0 + T);
      for (idx_t p = 0; p < nr; p += QN) {  // neighbours in range order: union of their ranges
        idx_t b = t1, e = t0;
        for (int i = 0; i < QN; ++i) {
          const int q = order[std::min(p + i, nq - 1)];
          b = std::min(b, lo[q]);
          e = std::max(e, hi[q]);
        }
        b = std::max(b, t0);
        e = std::min(e, t1);
        if (b < e) run_tile<V, D, QN, true>(cb, xs + p * D, b, e, bs + p, bis + p);
      }
    }
    for (idx_t p = 0; p < nq; ++p) idx[q0 + order[p]] = bis[p];
  }
}

/// Calls f(std::integral_constant<int, D>{}) for the layout dimension D == d (one of
/// kNearestDims); does nothing for any other d.
template <class F>
void with_layout_dim(int d, F&& f) {
  switch (d) {
    case 2: f(std::integral_constant<int, 2>{}); break;
    case 4: f(std::integral_constant<int, 4>{}); break;
    case 6: f(std::integral_constant<int, 6>{}); break;
    case 8: f(std::integral_constant<int, 8>{}); break;
    case 12: f(std::integral_constant<int, 12>{}); break;
    case 16: f(std::integral_constant<int, 16>{}); break;
    default: break;
  }
}

/// Entry used by each ISA TU: dispatches on the layout dimension (one of kNearestDims).
template <class V, int QN>
void search(const NearestCodebook& cb, const float* x, idx_t n, std::int32_t* idx) {
  with_layout_dim(cb.d, [&](auto D) { search_fixed<V, decltype(D)::value, QN>(cb, x, n, idx); });
}

template <class V, int QN>
void search_hinted(const NearestCodebook& cb, const NearestHintData& h, const float* x, idx_t n,
                   const std::int32_t* hint, std::int32_t* idx) {
  with_layout_dim(cb.d, [&](auto D) { search_hinted_fixed<V, decltype(D)::value, QN>(cb, h, x, n, hint, idx); });
}

}  // namespace vptq::kernels::nearest_body
