// AVX2+FMA nearest-centroid kernel (this TU alone is compiled with -mavx2 -mfma).
#include "kernels/nearest_kernels.h"

#if defined(VPTQ_NEAREST_X86)
#include <immintrin.h>

#include "kernels/nearest_body-inl.h"

namespace vptq::kernels {

namespace {
struct Avx2 {
  using reg = __m256;
  static constexpr int W = 8;
  static reg load(const float* p) { return _mm256_loadu_ps(p); }
  static reg set1(float v) { return _mm256_set1_ps(v); }
  static reg fmadd(reg a, reg b, reg c) { return _mm256_fmadd_ps(a, b, c); }
  static reg min(reg a, reg b) { return _mm256_min_ps(a, b); }
  static bool any_lt(reg a, reg b) { return _mm256_movemask_ps(_mm256_cmp_ps(a, b, _CMP_LT_OQ)) != 0; }
  static void store(float* p, reg a) { _mm256_storeu_ps(p, a); }
};
}  // namespace

void nearest_scores_avx2(const NearestCodebook& cb, const float* x, idx_t n, std::int32_t* idx) {
  nearest_body::search<Avx2, 1>(cb, x, n, idx);
}

}  // namespace vptq::kernels
#endif
