// AVX2+FMA nearest-centroid kernel (this TU alone is compiled with -mavx2 -mfma).
#include "kernels/nearest_kernels.h"

#if defined(VPTQ_NEAREST_X86)
#include <immintrin.h>

#include <cmath>

#include "kernels/nearest_body-inl.h"

namespace vptq::kernels {

namespace {
// Queries sharing each centroid load (measured on Zen 3, d = 2..16: 2 beats 1 and 3).
constexpr int kQueriesPerStep = 2;

struct Avx2 {
  using reg = __m256;
  static constexpr int W = 8;
  static constexpr bool kPinLoads = true;
  static reg load(const float* p) { return _mm256_loadu_ps(p); }
  static reg set1(float v) { return _mm256_set1_ps(v); }
  static reg bcast(const float* p) { return _mm256_broadcast_ss(p); }
  static reg fmadd(reg a, reg b, reg c) { return _mm256_fmadd_ps(a, b, c); }
  static float fma1(float a, float b, float c) { return std::fma(a, b, c); }
  static bool any_le(reg a, reg b) { return _mm256_movemask_ps(_mm256_cmp_ps(a, b, _CMP_LE_OQ)) != 0; }
  static reg min(reg a, reg b) { return _mm256_min_ps(a, b); }
  static bool any_lt(reg a, reg b) { return _mm256_movemask_ps(_mm256_cmp_ps(a, b, _CMP_LT_OQ)) != 0; }
  static float hmin(reg a) {
    __m128 v = _mm_min_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    v = _mm_min_ps(v, _mm_movehl_ps(v, v));
    v = _mm_min_ss(v, _mm_shuffle_ps(v, v, 1));
    return _mm_cvtss_f32(v);
  }
  static std::uint32_t eq_mask(reg a, reg b) {
    return static_cast<std::uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(a, b, _CMP_EQ_OQ)));
  }
};
}  // namespace

void nearest_scores_avx2(const NearestCodebook& cb, const float* x, idx_t n, std::int32_t* idx) {
  nearest_body::search<Avx2, kQueriesPerStep>(cb, x, n, idx);
}

void nearest_scores_hinted_avx2(const NearestCodebook& cb, const NearestHintData& h, const float* x, idx_t n,
                                const std::int32_t* hint, std::int32_t* idx) {
  nearest_body::search_hinted<Avx2, kQueriesPerStep>(cb, h, x, n, hint, idx);
}

}  // namespace vptq::kernels
#endif
