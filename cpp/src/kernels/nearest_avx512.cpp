// AVX-512F nearest-centroid kernel (this TU alone is compiled with -mavx512f ...).
// Compiled on every x86-64 build; only called when the CPU supports AVX-512.
#include "kernels/nearest_kernels.h"

#if defined(VPTQ_NEAREST_X86)
#include <immintrin.h>

#include "kernels/nearest_body-inl.h"

namespace vptq::kernels {

namespace {
struct Avx512 {
  using reg = __m512;
  static constexpr int W = 16;
  static reg load(const float* p) { return _mm512_loadu_ps(p); }
  static reg set1(float v) { return _mm512_set1_ps(v); }
  static reg fmadd(reg a, reg b, reg c) { return _mm512_fmadd_ps(a, b, c); }
  // Masked form with an all-ones mask: same result as _mm512_min_ps, whose GCC 12 header
  // version trips -Wmaybe-uninitialized (_mm512_undefined_ps).
  static reg min(reg a, reg b) { return _mm512_mask_min_ps(a, static_cast<__mmask16>(0xFFFF), a, b); }
  static bool any_lt(reg a, reg b) { return _mm512_cmp_ps_mask(a, b, _CMP_LT_OQ) != 0; }
  static void store(float* p, reg a) { _mm512_storeu_ps(p, a); }
};
}  // namespace

void nearest_scores_avx512(const NearestCodebook& cb, const float* x, idx_t n, std::int32_t* idx) {
  nearest_body::search<Avx512, 1>(cb, x, n, idx);
}

}  // namespace vptq::kernels
#endif
