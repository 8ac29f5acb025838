// Scalar baselines on the same inputs as VPTQ: round-to-nearest and GPTQ
// (asymmetric min/max grids per output row and group of input columns).
#pragma once

#include <cstdint>
#include <vector>

#include "vptq/common.h"
#include "vptq/hessian.h"

namespace vptq {

struct ScalarQuantParams {
  int bits = 2;             ///< 1..8
  idx_t group_size = 128;   ///< columns per group; <= 0 means one group per row (per-channel)
  int block_size = 128;     ///< GPTQ lazy-update block
};

struct ScalarQuantResult {
  idx_t M = 0, N = 0, group_size = 0, num_groups = 0;
  int bits = 0;
  std::vector<std::uint8_t> codes;  ///< [M, N] in original column order
  std::vector<float> scale;         ///< [M, num_groups]
  std::vector<float> zero;          ///< [M, num_groups] (integer zero point stored as float)
  std::vector<std::int32_t> g_idx;  ///< [N]: group of each original column
  /// Ŵ[i, j] = (codes[i, j] - zero[i, g]) * scale[i, g], g = g_idx[j]. out: [M, N].
  void dequantize(float* out) const;
};

ScalarQuantResult rtn_quantize(const float* W, idx_t M, idx_t N, const ScalarQuantParams& params);
/// GPTQ with the prepared Hessian (act-order iff H.perm is not the identity; groups are
/// consecutive in permuted order, their grid fixed when the group's first column is reached).
ScalarQuantResult gptq_quantize(const float* W, idx_t M, idx_t N, const PreparedHessian& H,
                                const ScalarQuantParams& params);

}  // namespace vptq
