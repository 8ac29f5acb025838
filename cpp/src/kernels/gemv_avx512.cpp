// AVX-512 (F/BW/VL/DQ) GEMV tile kernel. Same body as the AVX2 kernel, compiled
// with AVX-512 enabled so the compiler can use the 32 vector registers: larger
// register tiles (8 row blocks x 3 batch rows for v <= 8) cut the loads of
// broadcast activations and indices per FMA. Runs only where the CPU has
// AVX-512 (the dispatcher checks); its tests skip elsewhere.
#define VPTQ_GEMV_NS avx512_impl
#define VPTQ_GEMV_RBS1_NV1 8
#define VPTQ_GEMV_RBSB_NV1 8
#define VPTQ_GEMV_RBS1_NV2 4
#define VPTQ_GEMV_RBSB_NV2 4
#define VPTQ_GEMV_BT 3
#include "kernels/gemv_tile_inl.h"

namespace vptq::detail {

void gemv_tile_avx512(const TileArgs& a, const float* xs, idx_t ldx, idx_t batch, float* acc, idx_t ld) {
  avx512_impl::tile(a, xs, ldx, batch, acc, ld);
}

void dequant_t_avx512(const TileArgs& a, float* qt, idx_t ldq) { avx512_impl::dequant_t(a, qt, ldq); }

void gemv_hist_avx512(const TileArgs& a, const float* xst, idx_t ldt, idx_t batch, float* acc, idx_t ld,
                    float* scratch) {
  avx512_impl::hist(a, xst, ldt, batch, acc, ld, scratch);
}

}  // namespace vptq::detail
