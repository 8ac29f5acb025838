// AVX-512F nearest-centroid kernel (this TU alone is compiled with -mavx512f ...).
// Compiled on every x86-64 build; only called when the CPU supports AVX-512.
#include "kernels/nearest_kernels.h"

#if defined(VPTQ_NEAREST_X86)
#include <immintrin.h>

#include <cmath>

#include "kernels/nearest_body-inl.h"

namespace vptq::kernels {

namespace {
// Queries sharing each centroid load (measured on Zen 3, d = 2..16: 2 beats 1 and 3).
constexpr int kQueriesPerStep = 2;

struct Avx512 {
  using reg = __m512;
  static constexpr int W = 16;
  static constexpr bool kPinLoads = true;
  static reg load(const float* p) { return _mm512_loadu_ps(p); }
  static reg set1(float v) { return _mm512_set1_ps(v); }
  static reg bcast(const float* p) { return _mm512_set1_ps(*p); }
  static reg fmadd(reg a, reg b, reg c) { return _mm512_fmadd_ps(a, b, c); }
  // Masked form with an all-ones mask: same result as _mm512_min_ps, whose GCC 12 header
  // version trips -Wmaybe-uninitialized (_mm512_undefined_ps).
  static float fma1(float a, float b, float c) { return std::fma(a, b, c); }
  static bool any_le(reg a, reg b) { return _mm512_cmp_ps_mask(a, b, _CMP_LE_OQ) != 0; }
  static reg min(reg a, reg b) { return _mm512_mask_min_ps(a, static_cast<__mmask16>(0xFFFF), a, b); }
  static bool any_lt(reg a, reg b) { return _mm512_cmp_ps_mask(a, b, _CMP_LT_OQ) != 0; }
  static float hmin(reg a) {
    const __m256 h = _mm256_min_ps(_mm512_extractf32x8_ps(a, 0), _mm512_extractf32x8_ps(a, 1));
    __m128 v = _mm_min_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    v = _mm_min_ps(v, _mm_movehl_ps(v, v));
    v = _mm_min_ss(v, _mm_shuffle_ps(v, v, 1));
    return _mm_cvtss_f32(v);
  }
  static std::uint32_t eq_mask(reg a, reg b) { return _mm512_cmp_ps_mask(a, b, _CMP_EQ_OQ); }
};
}  // namespace

void nearest_scores_avx512(const NearestCodebook& cb, const float* x, idx_t n, std::int32_t* idx) {
  nearest_body::search<Avx512, kQueriesPerStep>(cb, x, n, idx);
}

void nearest_scores_hinted_avx512(const NearestCodebook& cb, const NearestHintData& h, const float* x, idx_t n,
                                  const std::int32_t* hint, std::int32_t* idx) {
  nearest_body::search_hinted<Avx512, kQueriesPerStep>(cb, h, x, n, hint, idx);
}

}  // namespace vptq::kernels
#endif
