// AVX2 + FMA + F16C (+ BMI2) GEMV tile kernel (this TU is compiled with -mavx2 -mfma -mf16c -mbmi2).
// Register tiles fit the 16 ymm registers: batch 1 keeps 8 row-block accumulators
// (one 8-float vector each for v <= 8); batches keep 4 blocks x 3 rows = 12.
#define VPTQ_GEMV_NS avx2_impl
#define VPTQ_GEMV_RBS1_NV1 8
#define VPTQ_GEMV_RBSB_NV1 4
#define VPTQ_GEMV_RBS1_NV2 4
#define VPTQ_GEMV_RBSB_NV2 2
#define VPTQ_GEMV_BT 3
#include "kernels/gemv_tile_inl.h"

namespace vptq::detail {

void gemv_tile_avx2(const TileArgs& a, const float* xs, idx_t ldx, idx_t batch, float* acc, idx_t ld) {
  avx2_impl::tile(a, xs, ldx, batch, acc, ld);
}

void dequant_t_avx2(const TileArgs& a, float* qt, idx_t ldq) { avx2_impl::dequant_t(a, qt, ldq); }

void gemv_hist_avx2(const TileArgs& a, const float* xst, idx_t ldt, idx_t batch, float* acc, idx_t ld,
                    float* scratch) {
  avx2_impl::hist(a, xst, ldt, batch, acc, ld, scratch);
}

}  // namespace vptq::detail
