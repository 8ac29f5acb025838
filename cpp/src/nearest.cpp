// Nearest-centroid search: codebook preparation, SIMD dispatch, the BLAS GEMM-tile
// variant, and the brute-force reference.
//
// Fused kernel vs GEMM tiles (d = 8, one thread, Zen 3, bench/bench_kmeans.py --nearest):
// the fused register-blocked kernel is several times faster than sgemm tiles + argmin for
// every k measured (256 / 4096 / 65536): with an inner dimension of 8, sgemm is bound by
// writing and re-reading the distance tile, while the fused kernel keeps scores in
// registers and only looks at a chunk again when its minimum beats the running best.
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

}  // namespace

namespace kernels {

void nearest_scores_scalar(const NearestCodebook& cb, const float* x, idx_t n, std::int32_t* idx) {
  const int d = cb.d;
  const idx_t nblk = cb.kpad / kNearestBlock;
  float qm2[16];
  float s[kNearestBlock];
  for (idx_t q = 0; q < n; ++q) {
    for (int j = 0; j < d; ++j) qm2[j] = -2.0f * x[q * d + j];
    float best = kInf;
    idx_t besti = 0;
    for (idx_t b = 0; b < nblk; ++b) {
      const float* blk = cb.cb + b * d * kNearestBlock;
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
  c_soa_.assign(static_cast<std::size_t>(kpad_ * d), 0.0f);
  norms_.assign(static_cast<std::size_t>(kpad_), kInf);
  for (idx_t i = 0; i < k; ++i) {
    const idx_t b = i / B, l = i % B;
    float nrm = 0.0f;
    for (int j = 0; j < d; ++j) {
      const float v = c[i * d + j];
      c_soa_[static_cast<std::size_t>((b * d + j) * B + l)] = v;
      nrm += v * v;
    }
    norms_[static_cast<std::size_t>(i)] = nrm;
  }
}

void CodebookSearcher::search(const float* x, idx_t n, std::int32_t* idx, float* dist) const {
  check_search_args(x, n, idx);
  if (n == 0) return;
  kernels::NearestCodebook cb;
  cb.cb = c_soa_.data();
  cb.norms = norms_.data();
  cb.k = k_;
  cb.kpad = kpad_;
  cb.d = d_;
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
  if (dist) {
    for (idx_t i = 0; i < n; ++i) dist[i] = exact_dist(x + i * d_, c_.data() + idx_t{idx[i]} * d_, d_);
  }
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
  if (dist) {
    for (idx_t i = 0; i < n; ++i) dist[i] = exact_dist(x + i * d_, c_.data() + idx_t{idx[i]} * d_, d_);
  }
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
