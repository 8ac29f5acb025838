// The VPTQ weight layout and packed index format (design note §3), shared by
// the quantizer, dequantization, the GEMV kernels and the file I/O.
#pragma once

#include <cstdint>

#include "vptq/common.h"

namespace vptq {

/// Shapes of one quantized Linear W[M=out_features, N=in_features].
/// Permuted column order: [0, outlier_size) outliers (codebook v0/k0), then
/// group_num contiguous groups of group_size columns (codebooks v/k1 (+k2)).
struct VQLayout {
  idx_t M = 0, N = 0;
  int v = 8;
  idx_t k1 = 256;
  idx_t k2 = 0;  ///< 0 = no residual codebook
  int v0 = 0;
  idx_t k0 = 0;  ///< 0 = no outlier codebook (then outlier_size == 0)
  int group_num = 1;
  idx_t outlier_size = 0;
  idx_t group_size = 0;

  /// ceil(M / v): vectors per column of a group (row blocks).
  idx_t num_indices() const { return (M + v - 1) / v; }
  /// ceil(M / v0): vectors per outlier column (0 without outliers).
  idx_t num_outlier_indices() const { return k0 > 0 ? (M + v0 - 1) / v0 : 0; }
  int index_bits() const;         ///< log2(k1)
  int res_index_bits() const;     ///< log2(k2) or 0
  int outlier_index_bits() const; ///< log2(k0) or 0
  /// int32 words per packed row: ceil(group_size * (b1 + b2) / 32).
  idx_t packed_words() const;
};

/// Computes the layout as the reference's get_group_setting and validates it:
/// v, v0 in [2, 16]; k1, k2 (if > 0), k0 (if > 0) powers of two in [2, 65536];
/// outlier_percent in [0, 100); outlier_percent > 0 requires k0 > 0;
/// (N - outlier_size) divisible by group_num (outlier_size absorbs the remainder
/// only when outliers are enabled). Throws std::invalid_argument naming the problem.
/// Outliers are enabled iff k0 > 0: outlier_size = o + (N - o) % group_num with
/// o = ceil(outlier_percent / 100 * N) (reference get_group_setting); v0 is ignored
/// and stored as 0 when k0 == 0. Also M >= 1, 1 <= N <= 65536, group_size >= 1.
VQLayout make_layout(idx_t M, idx_t N, int v, idx_t k1, idx_t k2, double outlier_percent, int v0,
                     idx_t k0, int group_num);

/// Validates a layout read from a file (same rules, outlier/group sizes given).
void check_layout(const VQLayout& L);

/// Words of one packed row: ceil(cols * (b1 + b2) / 32). Validates b1 in [1, 16],
/// b2 in [0, 16] and cols >= 0 (std::invalid_argument otherwise).
idx_t packed_row_words(idx_t cols, int b1, int b2);

/// Packs rows of codes into the official LSB-first 32-bit bitstream (§3.3).
/// idx, ridx: [rows, cols] (ridx nullable iff b2 == 0); out: [rows, ceil(cols*(b1+b2)/32)].
/// Throws std::invalid_argument if a code does not fit its width.
void pack_indices(const std::uint16_t* idx, const std::uint16_t* ridx, idx_t rows, idx_t cols, int b1,
                  int b2, std::uint32_t* out);
/// Inverse of pack_indices (ridx nullable iff b2 == 0). Padding bits are ignored.
void unpack_indices(const std::uint32_t* packed, idx_t rows, idx_t cols, int b1, int b2,
                    std::uint16_t* idx, std::uint16_t* ridx);

/// Non-owning view of one quantized weight in unpacked form (all row-major).
struct VQWeightsView {
  VQLayout layout;
  const float* centroids = nullptr;          ///< [G, k1, v]
  const float* res_centroids = nullptr;      ///< [G, k2, v] or nullptr iff k2 == 0
  const float* outlier_centroids = nullptr;  ///< [k0, v0] or nullptr iff k0 == 0
  const std::uint16_t* indices = nullptr;    ///< [G, num_indices, group_size]
  const std::uint16_t* res_indices = nullptr;      ///< [G, num_indices, group_size] or nullptr
  const std::uint16_t* outlier_indices = nullptr;  ///< [num_outlier_indices, outlier_size] or nullptr
  const idx_t* perm = nullptr;   ///< [N]: perm[p] = original column of permuted position p; nullptr = identity
  const float* scale = nullptr;  ///< [N] per original column, nullptr = 1
  const float* bias = nullptr;   ///< [N] per original column, nullptr = 0
};

/// Checks the layout, pointers present/absent per layout (res_* iff k2 > 0, outlier_* iff k0 > 0;
/// outlier_indices may be null when outlier_size == 0), every index < its k, perm a permutation of
/// 0..N-1, centroids/scale/bias finite. Throws std::invalid_argument naming the first offender
/// (deterministic for any thread count).
void check_weights(const VQWeightsView& w);

/// Dense reconstruction Ŵ [M, N] exactly per §3.4 (scalar reference; fp32):
/// q = C[idx] (+ R[ridx]), Ŵ[i, perm[p]] = q * scale[perm[p]] + bias[perm[p]].
/// Runs check_weights(w) first, so corrupt data throws instead of reading out of bounds.
/// out: [M, N] row-major.
void dequantize(const VQWeightsView& w, float* out);

}  // namespace vptq
