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

struct NearestCodebook {
  /// [kpad / 16, d, 16]: coordinate j of centroid 16b+l is cb[(b*d + j)*16 + l]; padding = 0.
  const float* cb = nullptr;
  /// [kpad]: ||c_j||², +inf for the padding centroids (never selected).
  const float* norms = nullptr;
  idx_t k = 0;     // real centroids
  idx_t kpad = 0;  // k rounded up to kNearestPad
  int d = 0;       // 1..16
};

/// Portable reference of the score kernel (baseline ISA). x: [n, d]; idx: out [n].
void nearest_scores_scalar(const NearestCodebook& cb, const float* x, idx_t n, std::int32_t* idx);

#if defined(__x86_64__) || defined(_M_X64)
#define VPTQ_NEAREST_X86 1
/// AVX2+FMA kernel (nearest_avx2.cpp). x: [n, d]; idx: out [n].
void nearest_scores_avx2(const NearestCodebook& cb, const float* x, idx_t n, std::int32_t* idx);
/// AVX-512F kernel (nearest_avx512.cpp). x: [n, d]; idx: out [n].
void nearest_scores_avx512(const NearestCodebook& cb, const float* x, idx_t n, std::int32_t* idx);
#endif

}  // namespace vptq::kernels
