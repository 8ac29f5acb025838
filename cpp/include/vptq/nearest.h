// Nearest-centroid search (squared L2) — the inner kernel of k-means assignment
// and of the VPTQ quantization pass. Dispatches to the SIMD level in use.
#pragma once

#include <cstdint>
#include <vector>

#include "vptq/common.h"

namespace vptq {

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
  void search(const float* x, idx_t n, std::int32_t* idx, float* dist) const;

 private:
  idx_t k_;
  int d_;
  std::vector<float> c_;      // [k, d] row-major
  std::vector<float> c_soa_;  // implementation-defined SIMD layout
  std::vector<float> norms_;  // ||c_j||²
};

/// Reference: brute force, exact ||x - c||² with a scalar loop. Same contract as search().
void nearest_centroid_ref(const float* x, idx_t n, int d, const float* c, idx_t k, std::int32_t* idx,
                          float* dist);

}  // namespace vptq
