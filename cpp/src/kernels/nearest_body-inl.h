// Private: the fused nearest-centroid kernel body shared by the per-ISA translation
// units (nearest_avx2.cpp, nearest_avx512.cpp). Include only from a TU compiled with the
// matching ISA flags; `V` is a traits struct of that TU:
//   V::reg, V::W (lanes), load(p), set1(v), bcast(p) (= set1(*p), from memory),
//   fma1(a, b, c) (scalar, rounded like one lane of fmadd), any_le(a, b), fmadd(a, b, c) = a*b + c, min(a, b),
//   any_lt(a, b) (some lane a < b), hmin(a) (min over lanes), eq_mask(a, b) (bit l set
//   iff lane l of a == lane l of b).
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
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <utility>

#include "kernels/nearest_kernels.h"

namespace vptq::kernels::nearest_body {

template <class V, int D, int QN, bool kHint = false>
inline void run_tile(const NearestCodebook& cb, const float* x /*[QN, D]*/, idx_t c_begin, idx_t c_end,
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
  alignas(64) float qs[QN][D];
  reg bv[QN];
#pragma GCC unroll 4
  for (int qi = 0; qi < QN; ++qi) {
#pragma GCC unroll 16
    for (int j = 0; j < D; ++j) qs[qi][j] = -2.0f * x[qi * D + j];
    bv[qi] = V::set1(best[qi]);
  }
  if constexpr (QN == 1) {
#pragma GCC unroll 16
    for (int j = 0; j < D; ++j) qb[j] = V::set1(qs[0][j]);
  }
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
          qv[qi] = V::bcast(&qs[qi][j]);
      }
#pragma GCC unroll 4
      for (int u = 0; u < 4; ++u) {
        reg c = V::load(base + ((u * W) / B) * D * B + j * B + (u * W) % B);
        // Keep the centroid in a register shared by the QN queries (otherwise GCC folds a
        // separate load into each FMA, doubling the load traffic this blocking removes).
        if constexpr (QN > 1) asm("" : "+v"(c));
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

template <class V, int D, int QN>
void search_fixed(const NearestCodebook& cb, const float* x /*[n, D]*/, idx_t n, std::int32_t* idx /*[n]*/) {
  constexpr int CH = 4 * V::W;
  constexpr idx_t QB = 128;  // queries per pass over the centroid tiles
  // Centroid tile kept in L1: (D + 1) floats per centroid, ~16 KB.
  constexpr idx_t T = std::max<idx_t>(CH, (16384 / ((D + 1) * 4)) / CH * CH);
  float best[QB];
  std::int32_t besti[QB];
  for (idx_t q0 = 0; q0 < n; q0 += QB) {
    const idx_t nq = std::min(QB, n - q0);
    for (idx_t q = 0; q < nq; ++q) {
      best[q] = std::numeric_limits<float>::infinity();
      besti[q] = 0;
    }
    for (idx_t t0 = 0; t0 < cb.kpad; t0 += T) {
      const idx_t t1 = std::min(cb.kpad, t0 + T);
      idx_t q = 0;
      for (; q + QN <= nq; q += QN)
        run_tile<V, D, QN>(cb, x + (q0 + q) * D, t0, t1, best + q, besti + q);
      for (; q < nq; ++q) run_tile<V, D, 1>(cb, x + (q0 + q) * D, t0, t1, best + q, besti + q);
    }
    std::copy(besti, besti + nq, idx + q0);
  }
}

template <class V, int D, int QN>
void search_hinted_fixed(const NearestCodebook& cb, const NearestHintData& h, const float* x /*[n, D]*/, idx_t n,
                         const std::int32_t* hint /*[n]*/, std::int32_t* idx /*[n]*/) {
  constexpr int CH = 4 * V::W;
  constexpr idx_t QB = 128;
  constexpr idx_t T = std::max<idx_t>(CH, (16384 / ((D + 1) * 4)) / CH * CH);
  alignas(64) float xs[QB * D];  // block queries in range order
  float best[QB];
  std::int32_t besti[QB];
  idx_t lo[QB], hi[QB];
  int order[QB];
  for (idx_t q0 = 0; q0 < n; q0 += QB) {
    const idx_t nq = std::min(QB, n - q0);
    for (idx_t q = 0; q < nq; ++q) {
      const float* xq = x + (q0 + q) * D;
      const std::int32_t hq = hint[q0 + q];
      nearest_hint_range(h, cb.k, D, xq, hq, &lo[q], &hi[q]);
      lo[q] = lo[q] / CH * CH;  // kNearestRangeGroup multiples -> chunk multiples
      hi[q] = std::min(cb.kpad, (hi[q] + CH - 1) / CH * CH);
      // The hint's score in the kernel's own arithmetic (same FMA chain as a lane).
      float sc = h.norm2[hq];
      for (int j = 0; j < D; ++j) sc = V::fma1(h.c[idx_t{hq} * D + j], -2.0f * xq[j], sc);
      best[q] = sc;
      besti[q] = hq;
      order[q] = static_cast<int>(q);
    }
    // Neighbours in range order share most of their range: pair them (union of ranges).
    std::sort(order, order + nq, [&](int a, int b) { return lo[a] != lo[b] ? lo[a] < lo[b] : a < b; });
    float bs[QB];
    std::int32_t bis[QB];
    idx_t los[QB], his[QB];
    for (idx_t p = 0; p < nq; ++p) {
      const int q = order[p];
      std::copy(x + (q0 + q) * D, x + (q0 + q + 1) * D, xs + p * D);
      bs[p] = best[q];
      bis[p] = besti[q];
      los[p] = lo[q];
      his[p] = hi[q];
    }
    for (idx_t t0 = 0; t0 < cb.kpad; t0 += T) {
      const idx_t t1 = std::min(cb.kpad, t0 + T);
      idx_t p = 0;
      for (; p + QN <= nq; p += QN) {
        idx_t b = los[p], e = his[p];
        for (int i = 1; i < QN; ++i) {
          b = std::min(b, los[p + i]);
          e = std::max(e, his[p + i]);
        }
        b = std::max(b, t0);
        e = std::min(e, t1);
        if (b < e) run_tile<V, D, QN, true>(cb, xs + p * D, b, e, bs + p, bis + p);
      }
      for (; p < nq; ++p) {
        const idx_t b = std::max(los[p], t0), e = std::min(his[p], t1);
        if (b < e) run_tile<V, D, 1, true>(cb, xs + p * D, b, e, bs + p, bis + p);
      }
    }
    for (idx_t p = 0; p < nq; ++p) idx[q0 + order[p]] = bis[p];
  }
}

using SearchFn = void (*)(const NearestCodebook&, const float*, idx_t, std::int32_t*);

template <class V, int QN, int... Ds>
constexpr SearchFn pick(int d, std::integer_sequence<int, Ds...>) {
  SearchFn fn = nullptr;
  ((fn = (d == Ds + 1) ? &search_fixed<V, Ds + 1, QN> : fn), ...);
  return fn;
}

/// Entry used by each ISA TU: dispatches on d (1..16) to the unrolled instance.
template <class V, int QN>
void search(const NearestCodebook& cb, const float* x, idx_t n, std::int32_t* idx) {
  const SearchFn fn = pick<V, QN>(cb.d, std::make_integer_sequence<int, 16>{});
  if (fn) fn(cb, x, n, idx);
}

using HintedFn = void (*)(const NearestCodebook&, const NearestHintData&, const float*, idx_t, const std::int32_t*,
                          std::int32_t*);

template <class V, int QN, int... Ds>
constexpr HintedFn pick_hinted(int d, std::integer_sequence<int, Ds...>) {
  HintedFn fn = nullptr;
  ((fn = (d == Ds + 1) ? &search_hinted_fixed<V, Ds + 1, QN> : fn), ...);
  return fn;
}

template <class V, int QN>
void search_hinted(const NearestCodebook& cb, const NearestHintData& h, const float* x, idx_t n,
                   const std::int32_t* hint, std::int32_t* idx) {
  const HintedFn fn = pick_hinted<V, QN>(cb.d, std::make_integer_sequence<int, 16>{});
  if (fn) fn(cb, h, x, n, hint, idx);
}

}  // namespace vptq::kernels::nearest_body
