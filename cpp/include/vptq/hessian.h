// Hessian (second moment of layer inputs) collection and preparation.
// One place derives everything the quantizers need from one matrix:
// normalisation, dead columns, act-order permutation, damping and the upper
// Cholesky factor of the damped inverse (design note §1.1, "do better").
#pragma once

#include <cstdint>
#include <vector>

#include "vptq/common.h"

namespace vptq {

/// Streaming accumulation of S = Σ x xᵀ (float64) over batches of input rows.
class HessianAccumulator {
 public:
  explicit HessianAccumulator(idx_t n);
  /// x: row-major [rows, n]; rows may be 0. Non-finite values throw std::invalid_argument.
  void add_batch(const float* x, idx_t rows);
  void add_batch(const double* x, idx_t rows);
  idx_t n() const { return n_; }
  /// Number of rows (tokens) accumulated so far.
  idx_t count() const { return count_; }
  /// E[x xᵀ] = S / count, full symmetric, row-major n*n. Throws if count() == 0.
  std::vector<double> second_moment() const;
  /// Raw Σ x xᵀ (full symmetric, row-major n*n).
  const std::vector<double>& sum() const;
  /// Adds another accumulator's sums (same n).
  void merge(const HessianAccumulator& other);

 private:
  idx_t n_;
  idx_t count_ = 0;
  mutable std::vector<double> S_;  // lower triangle is authoritative until symmetrised
  mutable bool symmetric_ = true;
};

struct HessianPrepParams {
  /// Damping added to the diagonal, relative to the mean diagonal (GPTQ percdamp).
  double percdamp = 0.01;
  /// Act-order: permute columns by descending diagonal (stable, ties keep original order).
  bool act_order = true;
  /// If the damped matrix is not positive definite (or its inverse factor overflows
  /// float32), damping is multiplied by 10 (from 1e-6 when percdamp is 0) until it
  /// exceeds this (relative to mean diagonal); then NumericalError.
  double max_percdamp = 10.0;
};

/// Everything derived from one Hessian. All matrices row-major n*n.
struct PreparedHessian {
  idx_t n = 0;
  /// Mean of the input diagonal, used to normalise (H_norm = H / scale).
  double scale = 1.0;
  /// Normalised diagonal in ORIGINAL column order, before the dead-column fix
  /// (the k-means weights of the paper).
  std::vector<double> diag;
  /// dead[j] = 1 if the input diagonal of column j was 0 (W[:, j] is zeroed, H_jj := 1).
  std::vector<std::uint8_t> dead;
  /// perm[p] = original column at permuted position p (identity without act_order).
  std::vector<idx_t> perm;
  /// Normalised, dead-fixed, permuted, UNdamped Hessian.
  std::vector<double> H;
  /// Absolute damping that was added (in normalised units) to get a PD matrix.
  double damp = 0.0;
  /// Upper Cholesky factor U of (H + damp·I)^-1 in permuted order: (H+damp I)^-1 = Uᵀ U.
  std::vector<float> U;
};

/// H: row-major n*n, finite, diag >= 0, symmetric: the values are taken from the lower
/// triangle; the upper one must match it up to accumulation rounding
/// (|H_ij - H_ji| <= 1e-3·sqrt(H_ii H_jj) + 1e-6·(|H_ij| + |H_ji|)).
/// Throws std::invalid_argument for bad input (incl. an all-zero diagonal) and
/// NumericalError if no damping up to max_percdamp makes it positive definite.
/// The damping is relative to the mean normalised diagonal before the dead-column fix (= 1),
/// i.e. damp = percdamp in normalised units. Deterministic for any thread count.
PreparedHessian prepare_hessian(const double* H, idx_t n, const HessianPrepParams& params = {});

/// Proxy loss tr((W - Wq) H (W - Wq)ᵀ) for W, Wq row-major [M, N], H row-major [N, N]
/// (all of H is used). Computed in float64 as Σ_ij H_ij (DᵀD)_ij, D = W - Wq, with DᵀD
/// accumulated over row chunks (extra memory N² doubles); deterministic for any thread count.
double proxy_loss(const float* W, const float* Wq, idx_t M, idx_t N, const double* H);

}  // namespace vptq
