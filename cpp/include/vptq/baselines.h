// Scalar baselines on the same inputs as VPTQ: round-to-nearest and GPTQ
// (asymmetric min/max grids per output row and group of input columns).
//
// Grid of one (row, group) with values w: lo = min(min w, 0), hi = max(max w, 0) (the range
// always contains 0, as in GPTQ, so the zero point is an integer in [0, 2^bits - 1]);
//   scale = (hi - lo) / (2^bits - 1), zero = clamp(round(-lo / scale), 0, 2^bits - 1),
//   code = clamp(round(w / scale) + zero, 0, 2^bits - 1)  (round = to nearest, ties to even),
// so |w - ŵ| <= scale / 2. A constant group c is stored exactly (scale = |c|, or 1 for c = 0;
// zero = 1 if c < 0 else 0).
#pragma once

#include <cstdint>
#include <vector>

#include "vptq/common.h"
#include "vptq/hessian.h"

namespace vptq {

struct ScalarQuantParams {
  int bits = 2;             ///< 1..8
  idx_t group_size = 128;   ///< columns per group; <= 0 means one group per row (per-channel);
                            ///< the last group may be shorter
  int block_size = 128;     ///< GPTQ lazy-update block
};

struct ScalarQuantResult {
  idx_t M = 0, N = 0;
  idx_t group_size = 0;  ///< effective: min(params.group_size, N), or N for per-channel
  idx_t num_groups = 0;  ///< ceil(N / group_size)
  int bits = 0;
  std::vector<std::uint8_t> codes;  ///< [M, N] in original column order
  std::vector<float> scale;         ///< [M, num_groups]
  std::vector<float> zero;          ///< [M, num_groups] (integer zero point stored as float)
  std::vector<std::int32_t> g_idx;  ///< [N]: group of each original column
  /// Ŵ[i, j] = (codes[i, j] - zero[i, g]) * scale[i, g], g = g_idx[j]. out: [M, N].
  void dequantize(float* out) const;
};

/// W: row-major [M, N], finite. g_idx[j] = j / group_size.
ScalarQuantResult rtn_quantize(const float* W, idx_t M, idx_t N, const ScalarQuantParams& params);
/// GPTQ with the prepared Hessian (act-order iff H.perm is not the identity; groups are
/// consecutive in permuted order, their grid fixed when the group's first column is reached).
/// W: row-major [M, N], finite; H.n == N. Dead columns (H.dead) are quantized as 0.
/// Lazy blocks of block_size columns also end at group starts, so every group's grid is
/// computed from fully error-updated weights. g_idx[H.perm[p]] = p / group_size.
/// Rows are processed in fixed blocks of 32: bit-identical for any thread count.
ScalarQuantResult gptq_quantize(const float* W, idx_t M, idx_t N, const PreparedHessian& H,
                                const ScalarQuantParams& params);

}  // namespace vptq
