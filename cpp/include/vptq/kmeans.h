// Weighted k-means (Lloyd) for codebook initialisation: each vector carries a
// weight (the Hessian diagonal of its column). Deterministic for a seed and
// independent of the thread count; memory O(n*d + k*d + block*k), never n*k.
#pragma once

#include <cstdint>
#include <vector>

#include "vptq/common.h"

namespace vptq {

struct KMeansParams {
  int max_iter = 100;
  /// Stop when the relative decrease of the weighted inertia is below tol.
  double tol = 1e-5;
  std::uint64_t seed = 0;
  /// Initialisation: false = k distinct vectors sampled uniformly (the reference's
  /// init='random'); true = k-means++ on a sample of at most kmeanspp_sample vectors.
  bool kmeanspp = false;
  idx_t kmeanspp_sample = 65536;
};

struct KMeansStats {
  /// Number of Lloyd iterations (centroid updates) performed, <= max_iter.
  int iterations = 0;
  /// Weighted inertia Σ w_i ||x_i - c_{a_i}||² after each assignment: inertia[0] for the
  /// initial centroids, inertia[t] after update t; size iterations + 1. The last entry is
  /// the inertia of the returned centroids and assignment.
  std::vector<double> inertia;
  /// Number of empty clusters re-seeded over the run.
  idx_t empty_reseeded = 0;
};

/// x: [n, d] row-major, finite; w: [n] finite weights >= 0 or nullptr (all 1); 1 <= k <= n;
/// 1 <= d <= 16. centroids: out [k, d]; assign: out [n] (nullable): final assignment to the
/// returned centroids. Stops when the relative inertia decrease is <= tol or after max_iter
/// updates. Empty (or zero-weight) clusters take the farthest point of the cluster with the
/// largest weighted error. Returns stats; throws std::invalid_argument on bad sizes/values.
KMeansStats weighted_kmeans(const float* x, idx_t n, int d, const float* w, idx_t k,
                            const KMeansParams& params, float* centroids, std::int32_t* assign);

}  // namespace vptq
