// VPTQ layer quantizer: channel-independent second-order vector quantization
// (design note §1.2), with residual and outlier codebooks and column groups.
#pragma once

#include <cstdint>
#include <vector>

#include "vptq/common.h"
#include "vptq/format.h"
#include "vptq/hessian.h"
#include "vptq/kmeans.h"

namespace vptq {

struct VQParams {
  int v = 8;
  idx_t k1 = 256;
  idx_t k2 = 0;  ///< residual centroids, 0 = none
  double outlier_percent = 0.0;
  int v0 = 4;
  idx_t k0 = 0;  ///< outlier centroids, 0 = none
  int group_num = 1;
  bool enable_norm = true;
  /// Act-order: must match how the PreparedHessian was made (perm non-identity iff true).
  bool enable_perm = true;
  int block_size = 128;
  KMeansParams kmeans;
  /// false = plain Hessian-weighted k-means VQ with no error feedback (ablation baseline).
  bool error_feedback = true;
  /// true: optimise the true proxy loss in the normalised space, i.e. use S·H·S (S = diag(scale))
  /// for the error feedback and the k-means weights. false: use H as is, like the reference
  /// implementation (which ignores the normalisation in the Hessian).
  bool norm_aware_hessian = true;
  /// Output rows per independent work chunk (rounded to a multiple of lcm(v, v0)); fixed, so
  /// results do not depend on the thread count.
  int row_chunk = 128;
};

struct VQResult {
  VQLayout layout;
  std::vector<float> centroids;          ///< [G, k1, v]
  std::vector<float> res_centroids;      ///< [G, k2, v] (empty without residual)
  std::vector<float> outlier_centroids;  ///< [k0, v0] (empty without outliers)
  std::vector<std::uint16_t> indices;          ///< [G, num_indices, group_size]
  std::vector<std::uint16_t> res_indices;      ///< [G, num_indices, group_size] or empty
  std::vector<std::uint16_t> outlier_indices;  ///< [num_outlier_indices, outlier_size] or empty
  std::vector<idx_t> perm;   ///< [N]
  std::vector<float> scale;  ///< [N] (empty without norm)
  std::vector<float> bias;   ///< [N] (empty without norm)
  /// k-means statistics of each codebook: [outlier?] main groups..., then residual groups.
  std::vector<KMeansStats> kmeans_stats;
  VQWeightsView view() const;
};

/// W: row-major [M, N] fp32, finite. H: prepared from the layer Hessian with
/// act_order == params.enable_perm.
VQResult vptq_quantize(const float* W, idx_t M, idx_t N, const PreparedHessian& H, const VQParams& params);

}  // namespace vptq
