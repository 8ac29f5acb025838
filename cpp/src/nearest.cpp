// Nearest-centroid search: codebook preparation, SIMD dispatch, the BLAS GEMM-tile
// variant, and the brute-force reference.
//
// Fused kernel vs GEMM tiles (d = 8, one thread, AVX2, shared Zen 3 VM; bench/bench_kmeans.py
// --nearest, Gpairs/s): k=256: 2.2-2.6 vs 0.5-0.7; k=4096: 3.5-4.6 vs 0.6; k=65536: 3.6-4.6
// vs 0.5-0.6. With an inner dimension of 8, sgemm is bound by writing and re-reading the
// distance tile, while the fused kernel keeps scores in registers and only looks at a chunk
// again when its minimum beats the running best. So search() is the fused kernel and
// search_gemm() is kept for comparison (and tested).
#include "vptq/nearest.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "kernels/nearest_kernels.h"
#include "vptq/simd.h"

namespace vptq {

namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr idx_t kMinHintedK = 2048;  // search_hinted falls back to search() below this k

/// Exact ||x - c||² in a fixed order (the same expression as the reference).
inline float exact_dist(const float* x, const float* c, int d) {
  float s = 0.0f;
  for (int j = 0; j < d; ++j) {
    const float t = x[j] - c[j];
    s += t * t;
  }
  return s;
}

void check_search_args(const float* x, idx_t n, const std::int32_t* idx) {
  VPTQ_CHECK(n >= 0, "search: expected n >= 0, got ", n);
  VPTQ_CHECK(n == 0 || (x != nullptr && idx != nullptr), "search: x and idx must not be null");
}

/// dist[i] = exact ||x_i - c_{idx[i]}||² for the chosen centroids. x: [n, d]; c: [k, d].
void exact_dists(const float* x, idx_t n, const std::int32_t* idx, const float* c, int d, float* dist) {
  for (idx_t i = 0; i < n; ++i) dist[i] = exact_dist(x + i * d, c + idx_t{idx[i]} * d, d);
}

}  // namespace

namespace kernels {

void nearest_scores_scalar(const NearestCodebook& cb, const float* x, idx_t n, std::int32_t* idx) {
  const int d = cb.dq, dl = cb.d;  // the layout's padding coordinates (d..dl-1) are zero: skipped
  const idx_t nblk = cb.kpad / kNearestBlock;
  float qm2[16];
  float s[kNearestBlock];
  for (idx_t q = 0; q < n; ++q) {
    for (int j = 0; j < d; ++j) qm2[j] = -2.0f * x[q * d + j];
    float best = kInf;
    idx_t besti = 0;
    for (idx_t b = 0; b < nblk; ++b) {
      const float* blk = cb.cb + b * dl * kNearestBlock;
      for (int l = 0; l < kNearestBlock; ++l) s[l] = cb.norms[b * kNearestBlock + l];
      for (int j = 0; j < d; ++j)
        for (int l = 0; l < kNearestBlock; ++l) s[l] += qm2[j] * blk[j * kNearestBlock + l];
      for (int l = 0; l < kNearestBlock; ++l) {
        if (s[l] < best) {
          best = s[l];
          besti = b * kNearestBlock + l;
        }
      }
    }
    idx[q] = static_cast<std::int32_t>(besti);
  }
}

namespace {
/// Branch-free: number of leading elements of the ascending a[0, n) with a[i] < v (kUpper:
/// a[i] <= v), i.e. std::lower_bound / upper_bound as an index.
template <bool kUpper>
inline idx_t count_below(const float* a, idx_t n, float v) {
  if (n == 0) return 0;
  const float* p = a;
  while (n > 1) {  // trip count depends on n only; no data-dependent branch
    const idx_t half = n / 2;
    const bool right = kUpper ? p[half - 1] <= v : p[half - 1] < v;
    p += half & -static_cast<idx_t>(right);
    n -= half;
  }
  const bool last = kUpper ? *p <= v : *p < v;
  return (p - a) + (last ? 1 : 0);
}
}  // namespace

void nearest_hint_range(const NearestHintData& h, idx_t k, int d, const float* x, std::int32_t hint, idx_t* lo,
                        idx_t* hi) {
  (void)k;
  // Triangle inequality: |‖x‖ - ‖c‖| <= ‖x - c‖, so a centroid nearer than c_hint has its norm
  // within ‖x‖ ± ‖x - c_hint‖. The margin, 3e-5 (‖x‖² + ‖c_hint‖² + r²) >= 1e-5 (‖x‖ + ‖c_hint‖ + r)²,
  // is far above the float rounding of the scores, so every centroid the full scan could pick
  // stays in range.
  const float* c = h.c + idx_t{hint} * d;
  double nx2 = 0.0, ch2 = 0.0, r2 = 0.0;
  for (int j = 0; j < d; ++j) {
    const double xj = x[j], cj = c[j], t = xj - cj;
    nx2 += xj * xj;
    ch2 += cj * cj;
    r2 += t * t;
  }
  const double nx = std::sqrt(nx2);
  const double rr = std::sqrt(r2 + 3e-5 * (nx2 + ch2 + r2));
  // Float bounds widened by 1e-6 (nx + rr), far more than the float rounding (the group
  // extremes are rounded outwards as well).
  const double slack = 1e-6 * (nx + rr);
  const float a = static_cast<float>(nx - rr - slack);
  const float b = static_cast<float>(nx + rr + slack);
  // Groups entirely below a or above b hold no candidate.
  *lo = count_below<false>(h.group_max, h.ngroups, a) * kNearestRangeGroup;
  *hi = count_below<true>(h.group_min, h.ngroups, b) * kNearestRangeGroup;
}

void nearest_hint_block(const NearestHintData& h, const NearestCodebook& cb, int chunk, const float* x, idx_t nq,
                        const std::int32_t* hint, idx_t* lo, idx_t* hi, int* order) {
  for (idx_t q = 0; q < nq; ++q) {
    nearest_hint_range(h, cb.k, cb.dq, x + q * cb.dq, hint[q], &lo[q], &hi[q]);
    lo[q] = lo[q] / chunk * chunk;
    hi[q] = std::min(cb.kpad, (hi[q] + chunk - 1) / chunk * chunk);
    order[q] = static_cast<int>(q);
  }
  std::sort(order, order + nq, [&](int a, int b) { return lo[a] != lo[b] ? lo[a] < lo[b] : a < b; });
}

void nearest_scores_hinted_scalar(const NearestCodebook& cb, const NearestHintData& h, const float* x, idx_t n,
                                  const std::int32_t* hint, std::int32_t* idx) {
  const int d = cb.dq, dl = cb.d;
  float qm2[16];
  for (idx_t q = 0; q < n; ++q) {
    const float* xq = x + q * d;
    const std::int32_t hq = hint[q];
    idx_t lo = 0, hi = 0;
    nearest_hint_range(h, cb.k, d, xq, hq, &lo, &hi);
    for (int j = 0; j < d; ++j) qm2[j] = -2.0f * xq[j];
    float best = h.norm2[hq];
    for (int j = 0; j < d; ++j) best += qm2[j] * h.c[idx_t{hq} * d + j];
    std::int32_t bi = hq;
    for (idx_t pos = lo; pos < hi; ++pos) {
      const float* blk = cb.cb + (pos / kNearestBlock) * dl * kNearestBlock + pos % kNearestBlock;
      float s = cb.norms[pos];
      for (int j = 0; j < d; ++j) s += qm2[j] * blk[j * kNearestBlock];
      const std::int32_t o = cb.perm[pos];
      if (s < best || (s == best && o < bi)) {
        best = s;
        bi = o;
      }
    }
    idx[q] = bi;
  }
}

}  // namespace kernels

CodebookSearcher::CodebookSearcher(const float* c, idx_t k, int d) : k_(k), d_(d), kpad_(0) {
  VPTQ_CHECK(d >= 1 && d <= 16, "CodebookSearcher: expected 1 <= d <= 16, got d = ", d);
  VPTQ_CHECK(k >= 1 && k <= std::numeric_limits<std::int32_t>::max(),
             "CodebookSearcher: expected 1 <= k <= 2^31-1, got k = ", k);
  VPTQ_CHECK(c != nullptr, "CodebookSearcher: centroids must not be null");
  const idx_t kd = k * d;
  for (idx_t i = 0; i < kd; ++i)
    VPTQ_CHECK(std::isfinite(c[i]), "CodebookSearcher: centroids must be finite, got ", c[i],
               " at flat index ", i);
  c_.assign(c, c + kd);
  constexpr idx_t P = kernels::kNearestPad;
  constexpr int B = kernels::kNearestBlock;
  kpad_ = (k + P - 1) / P * P;
  const int dl = kernels::nearest_layout_dim(d);
  c_soa_.assign(static_cast<std::size_t>(kpad_ * dl), 0.0f);
  norms_.assign(static_cast<std::size_t>(kpad_), kInf);
  for (idx_t i = 0; i < k; ++i) {
    const idx_t b = i / B, l = i % B;
    float nrm = 0.0f;
    for (int j = 0; j < d; ++j) {
      const float v = c[i * d + j];
      c_soa_[static_cast<std::size_t>((b * dl + j) * B + l)] = v;
      nrm += v * v;
    }
    norms_[static_cast<std::size_t>(i)] = nrm;
  }
  // Norm-sorted copy of the layout for search_hinted (ties in norm: original order).
  std::vector<double> cn(static_cast<std::size_t>(k));
  for (idx_t i = 0; i < k; ++i) {
    double s = 0.0;
    for (int j = 0; j < d; ++j) s += static_cast<double>(c[i * d + j]) * c[i * d + j];
    cn[static_cast<std::size_t>(i)] = std::sqrt(s);
  }
  perm_.assign(static_cast<std::size_t>(kpad_), static_cast<std::int32_t>(k));
  for (idx_t i = 0; i < k; ++i) perm_[static_cast<std::size_t>(i)] = static_cast<std::int32_t>(i);
  std::stable_sort(perm_.begin(), perm_.begin() + k, [&](std::int32_t a, std::int32_t b) {
    return cn[static_cast<std::size_t>(a)] < cn[static_cast<std::size_t>(b)];
  });
  soa_sorted_.assign(static_cast<std::size_t>(kpad_ * dl), 0.0f);
  norms_sorted_.assign(static_cast<std::size_t>(kpad_), kInf);
  constexpr idx_t G = kernels::kNearestRangeGroup;
  static_assert(kernels::kNearestPad % kernels::kNearestRangeGroup == 0, "groups must tile the padding");
  const idx_t ngroups = kpad_ / G;
  group_min_.assign(static_cast<std::size_t>(ngroups), kInf);
  group_max_.assign(static_cast<std::size_t>(ngroups), kInf);
  for (idx_t p = 0; p < k; ++p) {
    const idx_t i = perm_[static_cast<std::size_t>(p)], b = p / B, l = p % B;
    for (int j = 0; j < d; ++j) soa_sorted_[static_cast<std::size_t>((b * dl + j) * B + l)] = c[i * d + j];
    norms_sorted_[static_cast<std::size_t>(p)] = norms_[static_cast<std::size_t>(i)];
    const double v = cn[static_cast<std::size_t>(i)];
    const std::size_t g = static_cast<std::size_t>(p / G);
    if (p % G == 0) group_min_[g] = std::nextafter(static_cast<float>(v), -kInf);  // ascending: first is min
    group_max_[g] = std::nextafter(static_cast<float>(v), kInf);                   // last is max
  }
}

namespace {

/// Kernel view of a padded SoA codebook layout. soa: [kpad/16, d, 16]; norms: [kpad].
kernels::NearestCodebook kernel_view(const float* soa, const float* norms, idx_t k, idx_t kpad, int d) {
  kernels::NearestCodebook cb;
  cb.cb = soa;
  cb.norms = norms;
  cb.k = k;
  cb.kpad = kpad;
  cb.d = kernels::nearest_layout_dim(d);
  cb.dq = d;
  return cb;
}

}  // namespace

void CodebookSearcher::search_hinted(const float* x, idx_t n, const std::int32_t* hint, std::int32_t* idx,
                                     float* dist) const {
  check_search_args(x, n, idx);
  if (n == 0) return;
  VPTQ_CHECK(hint != nullptr, "search_hinted: hint must not be null");
  for (idx_t i = 0; i < n; ++i)
    VPTQ_CHECK(hint[i] >= 0 && hint[i] < k_, "search_hinted: expected hint in [0, ", k_, "), got ", hint[i],
               " at index ", i);
  // Small codebooks: the per-query range set-up (~200 cycles) costs more than it prunes
  // (measured d = 8: slower at k = 256, even at k = 1024, 2x faster at k = 4096).
  if (k_ < kMinHintedK) {
    search(x, n, idx, dist);
    return;
  }
  kernels::NearestCodebook cb = kernel_view(soa_sorted_.data(), norms_sorted_.data(), k_, kpad_, d_);
  cb.perm = perm_.data();
  kernels::NearestHintData h;
  h.c = c_.data();
  h.norm2 = norms_.data();
  h.group_min = group_min_.data();
  h.group_max = group_max_.data();
  h.ngroups = static_cast<idx_t>(group_min_.size());
  switch (get_simd_level()) {
#if defined(VPTQ_NEAREST_X86)
    case SimdLevel::AVX512:
      kernels::nearest_scores_hinted_avx512(cb, h, x, n, hint, idx);
      break;
    case SimdLevel::AVX2:
      kernels::nearest_scores_hinted_avx2(cb, h, x, n, hint, idx);
      break;
#endif
    default:
      kernels::nearest_scores_hinted_scalar(cb, h, x, n, hint, idx);
      break;
  }
  if (dist) exact_dists(x, n, idx, c_.data(), d_, dist);
}

void CodebookSearcher::search(const float* x, idx_t n, std::int32_t* idx, float* dist) const {
  check_search_args(x, n, idx);
  if (n == 0) return;
  const kernels::NearestCodebook cb = kernel_view(c_soa_.data(), norms_.data(), k_, kpad_, d_);
  switch (get_simd_level()) {
#if defined(VPTQ_NEAREST_X86)
    case SimdLevel::AVX512:
      kernels::nearest_scores_avx512(cb, x, n, idx);
      break;
    case SimdLevel::AVX2:
      kernels::nearest_scores_avx2(cb, x, n, idx);
      break;
#endif
    default:
      kernels::nearest_scores_scalar(cb, x, n, idx);
      break;
  }
  if (dist) exact_dists(x, n, idx, c_.data(), d_, dist);
}

void CodebookSearcher::search_gemm(const float* x, idx_t n, std::int32_t* idx, float* dist) const {
  check_search_args(x, n, idx);
  if (n == 0) return;
  constexpr idx_t QB = 256;   // queries per tile
  constexpr idx_t KB = 1024;  // centroids per tile
  thread_local std::vector<float> tile;
  if (tile.size() < static_cast<std::size_t>(QB * KB)) tile.resize(static_cast<std::size_t>(QB * KB));
  float best[QB];
  for (idx_t q0 = 0; q0 < n; q0 += QB) {
    const idx_t nq = std::min(QB, n - q0);
    for (idx_t q = 0; q < nq; ++q) {
      best[q] = kInf;
      idx[q0 + q] = 0;
    }
    for (idx_t k0 = 0; k0 < k_; k0 += KB) {
      const idx_t nk = std::min(KB, k_ - k0);
      // tile[q, j] = -2 x_q · c_j
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(nq), static_cast<int>(nk), d_,
                  -2.0f, x + q0 * d_, d_, c_.data() + k0 * d_, d_, 0.0f, tile.data(), static_cast<int>(nk));
      const float* nrm = norms_.data() + k0;
      for (idx_t q = 0; q < nq; ++q) {
        const float* row = tile.data() + q * nk;
        float b = best[q];
        idx_t bi = -1;
        for (idx_t j = 0; j < nk; ++j) {
          const float s = row[j] + nrm[j];
          if (s < b) {
            b = s;
            bi = j;
          }
        }
        if (bi >= 0) {
          best[q] = b;
          idx[q0 + q] = static_cast<std::int32_t>(k0 + bi);
        }
      }
    }
  }
  if (dist) exact_dists(x, n, idx, c_.data(), d_, dist);
}

void nearest_centroid_ref(const float* x, idx_t n, int d, const float* c, idx_t k, std::int32_t* idx,
                          float* dist) {
  VPTQ_CHECK(d >= 1 && d <= 16, "nearest_centroid_ref: expected 1 <= d <= 16, got d = ", d);
  VPTQ_CHECK(k >= 1 && k <= std::numeric_limits<std::int32_t>::max(),
             "nearest_centroid_ref: expected 1 <= k <= 2^31-1, got k = ", k);
  VPTQ_CHECK(c != nullptr, "nearest_centroid_ref: centroids must not be null");
  check_search_args(x, n, idx);
  for (idx_t i = 0; i < n; ++i) {
    float best = kInf;
    idx_t bi = 0;
    for (idx_t j = 0; j < k; ++j) {
      const float s = exact_dist(x + i * d, c + j * d, d);
      if (s < best) {
        best = s;
        bi = j;
      }
    }
    idx[i] = static_cast<std::int32_t>(bi);
    if (dist) dist[i] = exact_dist(x + i * d, c + bi * d, d);
  }
}

}  // namespace vptq
