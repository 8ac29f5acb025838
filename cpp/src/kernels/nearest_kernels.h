// Private: nearest-centroid kernels, one per SIMD level, over a shared padded
// structure-of-arrays codebook layout built by CodebookSearcher (nearest.cpp).
//
// Every kernel returns, per query x, argmin_j score_j with score_j = ||c_j||² - 2 x·c_j
// (the query norm does not change the argmin), lowest j on exact ties. The caller
// recomputes the exact squared distance of the winner.
#pragma once

#include <cstdint>

#include "vptq/common.h"

namespace vptq::kernels {

/// Centroids per layout block: block b holds centroids 16b..16b+15, dimension-major.
constexpr int kNearestBlock = 16;
/// k is padded to a multiple of this (one register chunk of the widest kernel).
constexpr int kNearestPad = 64;

/// Layout dimension for a query dimension d in 1..16: the kernels are unrolled for
/// d in {2, 4, 6, 8, 12, 16} only (compile time and code size); other d are zero padded up
/// (zero coordinates add exact zeros to the scores).
constexpr int nearest_layout_dim(int d) {
  return d <= 2 ? 2 : d <= 4 ? 4 : d <= 6 ? 6 : d <= 8 ? 8 : d <= 12 ? 12 : 16;
}

struct NearestCodebook {
  /// [kpad / 16, d, 16]: coordinate j of centroid 16b+l is cb[(b*d + j)*16 + l]; padding = 0.
  const float* cb = nullptr;
  /// [kpad]: ||c_j||², +inf for the padding centroids (never selected).
  const float* norms = nullptr;
  idx_t k = 0;     // real centroids
  idx_t kpad = 0;  // k rounded up to kNearestPad
  int d = 0;       // layout dimension: nearest_layout_dim(dq), coordinates dq..d-1 are 0
  int dq = 0;      // query / centroid dimension, 1..16
  /// [kpad] layout position -> original centroid index (padding: k), or nullptr when the
  /// layout is in original order. With a permutation, ties are broken by original index.
  const std::int32_t* perm = nullptr;
};

/// Granularity of the hinted search's candidate ranges (layout positions).
constexpr int kNearestRangeGroup = 32;

/// Extra data of the hinted search (layout sorted by ||c||, see CodebookSearcher::search_hinted).
struct NearestHintData {
  const float* c = nullptr;      // [k, dq] centroids, original order, row-major
  const float* norm2 = nullptr;  // [k] ||c_j||², original order (same values as the layout's)
  /// [ngroups] min / max of ||c|| over each group of kNearestRangeGroup layout positions,
  /// rounded outwards to float (+inf for groups of padding only); both ascending.
  const float* group_min = nullptr;
  const float* group_max = nullptr;
  idx_t ngroups = 0;
};

/// Portable reference of the score kernel (baseline ISA). x: [n, dq]; idx: out [n].
void nearest_scores_scalar(const NearestCodebook& cb, const float* x, idx_t n, std::int32_t* idx);

/// Hinted variants: cb is the norm-sorted layout (perm set); hint: [n] original indices in
/// [0, k) (may alias idx); only centroids whose norm is within ||x|| ± (||x - c_hint|| + margin)
/// are scanned, starting from the hint's score. x: [n, dq]; idx: out [n].
void nearest_scores_hinted_scalar(const NearestCodebook& cb, const NearestHintData& h, const float* x, idx_t n,
                                  const std::int32_t* hint, std::int32_t* idx);

/// Candidate range [lo, hi) of layout positions (multiples of kNearestRangeGroup, hi <= kpad) for
/// query x and hint centroid c_h: every centroid outside it is farther from x than c_h by more
/// than the rounding margin.
void nearest_hint_range(const NearestHintData& h, idx_t k, int d, const float* x, std::int32_t hint, idx_t* lo,
                        idx_t* hi);

/// For a block of nq <= 128 queries x [nq, cb.dq] with hints [nq]: lo/hi [nq] = candidate
/// ranges rounded out to multiples of `chunk` (hi <= cb.kpad), order [nq] = query indices
/// sorted by (lo, index).
void nearest_hint_block(const NearestHintData& h, const NearestCodebook& cb, int chunk, const float* x, idx_t nq,
                        const std::int32_t* hint, idx_t* lo, idx_t* hi, int* order);

#if defined(__x86_64__) || defined(_M_X64)
#define VPTQ_NEAREST_X86 1
/// AVX2+FMA kernel (nearest_avx2.cpp). x: [n, dq]; idx: out [n].
void nearest_scores_avx2(const NearestCodebook& cb, const float* x, idx_t n, std::int32_t* idx);
/// AVX-512F kernel (nearest_avx512.cpp). x: [n, dq]; idx: out [n].
void nearest_scores_avx512(const NearestCodebook& cb, const float* x, idx_t n, std::int32_t* idx);
void nearest_scores_hinted_avx2(const NearestCodebook& cb, const NearestHintData& h, const float* x, idx_t n,
                                const std::int32_t* hint, std::int32_t* idx);
void nearest_scores_hinted_avx512(const NearestCodebook& cb, const NearestHintData& h, const float* x, idx_t n,
                                  const std::int32_t* hint, std::int32_t* idx);
#endif

}  // namespace vptq::kernels
