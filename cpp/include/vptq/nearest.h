// Nearest-centroid search (squared L2) — the inner kernel of k-means assignment
// and of the VPTQ quantization pass. Dispatches to the SIMD level in use.
#pragma once

#include <cstddef>
#include <cstdint>
#include <new>
#include <vector>

#include "vptq/common.h"

namespace vptq {

namespace detail {
/// Minimal allocator returning 64-byte aligned storage (SIMD codebook layout).
template <class T>
struct Aligned64Allocator {
  using value_type = T;
  Aligned64Allocator() = default;
  template <class U>
  Aligned64Allocator(const Aligned64Allocator<U>&) noexcept {}
  T* allocate(std::size_t n) {
    return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t(64)));
  }
  void deallocate(T* p, std::size_t) noexcept { ::operator delete(p, std::align_val_t(64)); }
  template <class U>
  bool operator==(const Aligned64Allocator<U>&) const noexcept { return true; }
  template <class U>
  bool operator!=(const Aligned64Allocator<U>&) const noexcept { return false; }
};
}  // namespace detail

/// A codebook prepared once for repeated searches (layout and norms cached).
class CodebookSearcher {
 public:
  /// c: [k, d] row-major (copied); 1 <= d <= 16, k >= 1.
  CodebookSearcher(const float* c, idx_t k, int d);
  idx_t k() const { return k_; }
  int d() const { return d_; }
  /// For each query row of x [n, d]: idx[i] = argmin_j ||x_i - c_j||² (lowest j on
  /// exact ties), dist[i] = that squared distance (nullable). Single-threaded:
  /// callers parallelise over queries.
  /// Uses the fused register-blocked kernel of the current SIMD level (get_simd_level(),
  /// read at each call); no heap allocation.
  void search(const float* x, idx_t n, std::int32_t* idx, float* dist) const;
  /// Same contract as search(), computed with BLAS GEMM tiles (cblas_sgemm of a block of
  /// queries against a block of centroids, then argmin of ||c||² - 2 x·c). Slower than
  /// search() for d <= 16 (see bench notes in nearest.cpp); kept for comparison and tests.
  /// Uses a per-thread scratch tile; call BLAS single-threaded inside parallel regions.
  void search_gemm(const float* x, idx_t n, std::int32_t* idx, float* dist) const;
  /// Same contract and result as search() (up to float rounding of near-ties; identical on
  /// exactly representable data), faster when hint[i] is near the answer, e.g. the previous
  /// k-means assignment: a centroid nearer than c_hint has its norm within
  /// ||x|| ± ||x - c_hint|| (triangle inequality), so only centroids in that norm range (plus a
  /// rounding margin) are scanned, in a copy of the codebook sorted by norm. For k < 2048 the
  /// set-up costs more than it saves and this is search() (hint unused, but still checked).
  /// hint: [n] indices in [0, k) (may be the same array as idx). No heap allocation.
  void search_hinted(const float* x, idx_t n, const std::int32_t* hint, std::int32_t* idx, float* dist) const;
  /// Row-major copy of the codebook, [k, d].
  const float* centroids() const { return c_.data(); }

 private:
  idx_t k_;
  int d_;
  idx_t kpad_;                // k rounded up to the kernel padding (64)
  std::vector<float> c_;      // [k, d] row-major
  // [kpad/16, d, 16]: blocks of 16 centroids, dimension-major (64-byte aligned)
  std::vector<float, detail::Aligned64Allocator<float>> c_soa_;
  std::vector<float, detail::Aligned64Allocator<float>> norms_;  // [kpad] ||c_j||², +inf for padding
  // The same layout with centroids sorted by norm (search_hinted).
  std::vector<float, detail::Aligned64Allocator<float>> soa_sorted_;    // [kpad/16, d, 16]
  std::vector<float, detail::Aligned64Allocator<float>> norms_sorted_;  // [kpad]
  std::vector<std::int32_t> perm_;                                      // [kpad] position -> index (pad: k)
  std::vector<float> group_min_, group_max_;  // [kpad/32] ||c|| range of each group of 32 positions
};

/// Reference: brute force, exact ||x - c||² with a scalar loop. Same contract as search().
void nearest_centroid_ref(const float* x, idx_t n, int d, const float* c, idx_t k, std::int32_t* idx,
                          float* dist);

}  // namespace vptq
