// Hessian accumulation, preparation (normalise, dead columns, act-order, damping,
// inverse Cholesky factor) and the proxy loss.
//
// Determinism: every BLAS call runs single-threaded on a fixed tile of the
// problem, and tiles are spread over vptq::parallel_for; the tiling depends only
// on the sizes, never on the thread count, so results are bit-identical for any
// number of threads.
#include "vptq/hessian.h"

#include "blas_threads.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <stdexcept>
#include <string>
#include <vector>

extern "C" {
// LAPACK Cholesky from the linked OpenBLAS (column-major).
void dpotrf_(const char* uplo, const int* n, double* a, const int* lda, int* info);
}

namespace vptq {

namespace {

/// Column tile of the accumulator, the tiled Cholesky and the tiled inverse.
constexpr idx_t kTile = 128;

idx_t num_tiles(idx_t n) { return (n + kTile - 1) / kTile; }

/// fn(i) for every row i in [0, n), parallel over tiles of kTile rows (tiny n stays serial).
template <class F>
void for_row_tiles(idx_t n, F&& fn) {
  parallel_for(num_tiles(n), [&](idx_t t) {
    const idx_t end = std::min(n, (t + 1) * kTile);
    for (idx_t i = t * kTile; i < end; ++i) fn(i);
  });
}

/// S += Xᵀ X on the lower triangle. S: row-major [n, n]; X: row-major [rows, n].
void syrk_lower_tiled(double* S, const double* X, idx_t rows, idx_t n) {
  if (rows == 0) return;
  const int k = static_cast<int>(rows);
  const int ld = static_cast<int>(n);
  parallel_for_dynamic(num_tiles(n), [&](idx_t t) {
    const idx_t j0 = t * kTile;
    const idx_t j1 = std::min(n, j0 + kTile);
    const int w = static_cast<int>(j1 - j0);
    // Diagonal tile S[j0:j1, j0:j1] (lower) += X[:, j0:j1]ᵀ X[:, j0:j1].
    cblas_dsyrk(CblasRowMajor, CblasLower, CblasTrans, w, k, 1.0, X + j0, ld, 1.0, S + j0 * n + j0, ld);
    // Below it: S[j1:n, j0:j1] += X[:, j1:n]ᵀ X[:, j0:j1].
    if (j1 < n) {
      cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, static_cast<int>(n - j1), w, k, 1.0, X + j1, ld,
                  X + j0, ld, 1.0, S + j1 * n + j0, ld);
    }
  });
}

/// Rows of a float batch converted to double per chunk (depends on n only).
idx_t float_chunk_rows(idx_t n) { return std::clamp<idx_t>((idx_t{1} << 21) / n, 64, 4096); }

template <class T>
void check_finite_batch(const T* x, idx_t rows, idx_t n) {
  const idx_t total = rows * n;
  for (idx_t i = 0; i < total; ++i) {
    VPTQ_CHECK(std::isfinite(x[i]), "HessianAccumulator::add_batch: expected finite inputs, got ",
               static_cast<double>(x[i]), " at row ", i / n, ", column ", i % n);
  }
}

/// In-place lower Cholesky of the symmetric matrix A (column-major [n, n]; only the
/// lower triangle is read and written). Returns false if A is not positive definite.
bool cholesky_lower_tiled(double* A, idx_t n) {
  const int ld = static_cast<int>(n);
  const idx_t nt = num_tiles(n);
  for (idx_t kb = 0; kb < nt; ++kb) {
    const idx_t k0 = kb * kTile;
    const idx_t k1 = std::min(n, k0 + kTile);
    const int kw = static_cast<int>(k1 - k0);
    int info = 0;
    dpotrf_("L", &kw, A + k0 + k0 * n, &ld, &info);
    if (info != 0) return false;
    if (k1 == n) break;
    const double* Lkk = A + k0 + k0 * n;
    // Panel below the diagonal tile: A[k1:, k0:k1] := A[k1:, k0:k1] L_kk^-T.
    parallel_for(num_tiles(n - k1), [&](idx_t t) {
      const idx_t r0 = k1 + t * kTile;
      const int rw = static_cast<int>(std::min(n, r0 + kTile) - r0);
      cblas_dtrsm(CblasColMajor, CblasRight, CblasLower, CblasTrans, CblasNonUnit, rw, kw, 1.0, Lkk, ld,
                  A + r0 + k0 * n, ld);
    });
    // Trailing update, one column tile per task: A[j0:, j0:j1] -= P[j0:, :] P[j0:j1, :]ᵀ.
    parallel_for_dynamic(num_tiles(n - k1), [&](idx_t t) {
      const idx_t j0 = k1 + t * kTile;
      const idx_t j1 = std::min(n, j0 + kTile);
      const int jw = static_cast<int>(j1 - j0);
      cblas_dsyrk(CblasColMajor, CblasLower, CblasNoTrans, jw, kw, -1.0, A + j0 + k0 * n, ld, 1.0,
                  A + j0 + j0 * n, ld);
      if (j1 < n) {
        cblas_dgemm(CblasColMajor, CblasNoTrans, CblasTrans, static_cast<int>(n - j1), jw, kw, -1.0,
                    A + j1 + k0 * n, ld, A + j0 + k0 * n, ld, 1.0, A + j1 + j0 * n, ld);
      }
    });
  }
  return true;
}

/// Given the lower Cholesky factor L of J A J (J = reversal; column-major [n, n]),
/// writes U = J L^-1 J (upper triangular, row-major float [n, n]), which satisfies
/// A^-1 = Uᵀ U. Returns false if U has non-finite entries.
bool upper_inverse_factor(const double* L, idx_t n, float* U) {
  const int ld = static_cast<int>(n);
  std::vector<unsigned char> finite(static_cast<std::size_t>(num_tiles(n)), 1);
  parallel_for_dynamic(num_tiles(n), [&](idx_t t) {
    // Columns [j0, j1) of X = L^-1: solve L[j0:, j0:] X[j0:, j0:j1] = I[j0:, j0:j1].
    const idx_t j0 = t * kTile;
    const idx_t j1 = std::min(n, j0 + kTile);
    const idx_t m = n - j0;
    const idx_t w = j1 - j0;
    std::vector<double> T(static_cast<std::size_t>(m * w), 0.0);  // column-major [m, w]
    for (idx_t b = 0; b < w; ++b) T[static_cast<std::size_t>(b + b * m)] = 1.0;
    cblas_dtrsm(CblasColMajor, CblasLeft, CblasLower, CblasNoTrans, CblasNonUnit, static_cast<int>(m),
                static_cast<int>(w), 1.0, L + j0 + j0 * n, ld, T.data(), static_cast<int>(m));
    bool ok = true;
    for (idx_t b = 0; b < w; ++b) {
      // X[a, j0 + b] for a >= j0 + b  ->  U[n-1-a, n-1-(j0+b)].
      const idx_t col = n - 1 - (j0 + b);
      for (idx_t a = j0 + b; a < n; ++a) {
        const float v = static_cast<float>(T[static_cast<std::size_t>((a - j0) + b * m)]);
        ok = ok && std::isfinite(v);
        U[(n - 1 - a) * n + col] = v;
      }
    }
    finite[static_cast<std::size_t>(t)] = ok ? 1 : 0;
  });
  return std::all_of(finite.begin(), finite.end(), [](unsigned char f) { return f != 0; });
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// HessianAccumulator

HessianAccumulator::HessianAccumulator(idx_t n) : n_(n) {
  VPTQ_CHECK(n >= 1 && n <= (idx_t{1} << 17), "HessianAccumulator: expected 1 <= n <= 131072, got n = ", n);
  S_.assign(static_cast<std::size_t>(n * n), 0.0);
}

void HessianAccumulator::add_batch(const float* x, idx_t rows) {
  VPTQ_CHECK(rows >= 0, "HessianAccumulator::add_batch: expected rows >= 0, got ", rows);
  if (rows == 0) return;
  VPTQ_CHECK(x != nullptr, "HessianAccumulator::add_batch: x is null");
  check_finite_batch(x, rows, n_);
  const idx_t chunk = std::min(rows, float_chunk_rows(n_));
  std::vector<double> buf(static_cast<std::size_t>(chunk * n_));
  detail::BlasSingleThread blas1;
  for (idx_t r0 = 0; r0 < rows; r0 += chunk) {
    const idx_t r = std::min(chunk, rows - r0);
    const float* src = x + r0 * n_;
    for (idx_t i = 0; i < r * n_; ++i) buf[static_cast<std::size_t>(i)] = static_cast<double>(src[i]);
    syrk_lower_tiled(S_.data(), buf.data(), r, n_);
  }
  count_ += rows;
  symmetric_ = false;
}

void HessianAccumulator::add_batch(const double* x, idx_t rows) {
  VPTQ_CHECK(rows >= 0, "HessianAccumulator::add_batch: expected rows >= 0, got ", rows);
  if (rows == 0) return;
  VPTQ_CHECK(x != nullptr, "HessianAccumulator::add_batch: x is null");
  VPTQ_CHECK(rows <= (idx_t{1} << 30), "HessianAccumulator::add_batch: expected at most 2^30 rows per batch, got ",
             rows);
  check_finite_batch(x, rows, n_);
  detail::BlasSingleThread blas1;
  syrk_lower_tiled(S_.data(), x, rows, n_);
  count_ += rows;
  symmetric_ = false;
}

const std::vector<double>& HessianAccumulator::sum() const {
  if (!symmetric_) {
    for (idx_t i = 0; i < n_; ++i) {
      for (idx_t j = i + 1; j < n_; ++j) S_[static_cast<std::size_t>(i * n_ + j)] = S_[static_cast<std::size_t>(j * n_ + i)];
    }
    symmetric_ = true;
  }
  return S_;
}

std::vector<double> HessianAccumulator::second_moment() const {
  VPTQ_CHECK(count_ > 0, "HessianAccumulator::second_moment: no rows accumulated yet (count is 0)");
  std::vector<double> out = sum();
  const double inv = 1.0 / static_cast<double>(count_);
  for (auto& v : out) v *= inv;
  return out;
}

void HessianAccumulator::merge(const HessianAccumulator& other) {
  VPTQ_CHECK(other.n_ == n_, "HessianAccumulator::merge: expected an accumulator with n = ", n_, ", got n = ",
             other.n_);
  // Both lower triangles are authoritative; the upper one is re-derived on demand.
  const std::vector<double>& o = other.S_;
  for (idx_t i = 0; i < n_; ++i) {
    for (idx_t j = 0; j <= i; ++j) S_[static_cast<std::size_t>(i * n_ + j)] += o[static_cast<std::size_t>(i * n_ + j)];
  }
  count_ += other.count_;
  symmetric_ = false;
}

// ---------------------------------------------------------------------------------------------
// prepare_hessian

PreparedHessian prepare_hessian(const double* Hin, idx_t n, const HessianPrepParams& params) {
  VPTQ_CHECK(n >= 1 && n <= (idx_t{1} << 17), "prepare_hessian: expected 1 <= n <= 131072, got n = ", n);
  VPTQ_CHECK(Hin != nullptr, "prepare_hessian: H is null");
  VPTQ_CHECK(std::isfinite(params.percdamp) && params.percdamp >= 0,
             "prepare_hessian: expected a finite percdamp >= 0, got ", params.percdamp);
  VPTQ_CHECK(std::isfinite(params.max_percdamp) && params.max_percdamp >= params.percdamp,
             "prepare_hessian: expected a finite max_percdamp >= percdamp (", params.percdamp, "), got ",
             params.max_percdamp);
  const std::size_t nn = static_cast<std::size_t>(n * n);
  auto at = [&](idx_t i, idx_t j) { return Hin[i * n + j]; };

  // Validate: finite, diagonal >= 0, symmetric up to accumulation rounding.
  for (idx_t i = 0; i < n; ++i) {
    const double d = at(i, i);
    VPTQ_CHECK(std::isfinite(d), "prepare_hessian: expected a finite H, got H[", i, ", ", i, "] = ", d);
    VPTQ_CHECK(d >= 0, "prepare_hessian: expected a non-negative diagonal, got H[", i, ", ", i, "] = ", d,
               " (a second-moment matrix has diagonal E[x_j^2] >= 0)");
  }
  // Off-diagonal checks tile by tile (cache friendly, parallel); a failing tile is re-checked
  // serially so the reported entry does not depend on the thread count.
  auto check_tile = [&](idx_t ti, idx_t tj) {
    const idx_t i0 = ti * kTile, i1 = std::min(n, i0 + kTile);
    const idx_t j0 = tj * kTile, j1 = std::min(n, j0 + kTile);
    for (idx_t i = i0; i < i1; ++i) {
      for (idx_t j = j0; j < std::min(j1, i); ++j) {
        const double lo = at(i, j);
        const double up = at(j, i);
        VPTQ_CHECK(std::isfinite(lo) && std::isfinite(up), "prepare_hessian: expected a finite H, got H[", i,
                   ", ", j, "] = ", lo, ", H[", j, ", ", i, "] = ", up);
        const double tol = 1e-3 * std::sqrt(at(i, i) * at(j, j)) + 1e-6 * (std::fabs(lo) + std::fabs(up));
        VPTQ_CHECK(std::fabs(lo - up) <= tol, "prepare_hessian: expected a symmetric H, got H[", i, ", ", j,
                   "] = ", lo, " but H[", j, ", ", i, "] = ", up);
      }
    }
  };
  std::vector<unsigned char> tile_ok(static_cast<std::size_t>(num_tiles(n)), 1);
  parallel_for(num_tiles(n), [&](idx_t ti) {
    try {
      for (idx_t tj = 0; tj <= ti; ++tj) check_tile(ti, tj);
    } catch (const std::invalid_argument&) {
      tile_ok[static_cast<std::size_t>(ti)] = 0;
    }
  });
  for (idx_t ti = 0; ti < num_tiles(n); ++ti) {
    if (!tile_ok[static_cast<std::size_t>(ti)]) {
      for (idx_t tj = 0; tj <= ti; ++tj) check_tile(ti, tj);
    }
  }

  PreparedHessian P;
  P.n = n;
  double diag_sum = 0;
  for (idx_t i = 0; i < n; ++i) diag_sum += at(i, i);
  const double scale = diag_sum / static_cast<double>(n);
  VPTQ_CHECK(scale > 0, "prepare_hessian: Hessian is all zero (every diagonal entry is 0): "
             "expected at least one input channel with non-zero energy");
  VPTQ_CHECK(std::isfinite(scale), "prepare_hessian: the mean diagonal of H overflows (", scale, ")");
  P.scale = scale;
  P.diag.resize(static_cast<std::size_t>(n));
  P.dead.resize(static_cast<std::size_t>(n));
  std::vector<double> fixed_diag(static_cast<std::size_t>(n));
  for (idx_t i = 0; i < n; ++i) {
    const double d = at(i, i) / scale;
    P.diag[static_cast<std::size_t>(i)] = d;
    P.dead[static_cast<std::size_t>(i)] = at(i, i) == 0 ? 1 : 0;
    fixed_diag[static_cast<std::size_t>(i)] = at(i, i) == 0 ? 1.0 : d;
  }
  P.perm.resize(static_cast<std::size_t>(n));
  std::iota(P.perm.begin(), P.perm.end(), idx_t{0});
  if (params.act_order) {
    std::stable_sort(P.perm.begin(), P.perm.end(), [&](idx_t a, idx_t b) {
      return fixed_diag[static_cast<std::size_t>(a)] > fixed_diag[static_cast<std::size_t>(b)];
    });
  }

  // Normalised, dead-fixed symmetric matrix in original order (from the lower triangle),
  // built tile by tile to stay cache friendly; this buffer is reused as the Cholesky workspace.
  std::vector<double> work(nn);
  const double inv_scale = 1.0 / scale;
  parallel_for(num_tiles(n), [&](idx_t ti) {
    const idx_t i0 = ti * kTile, i1 = std::min(n, i0 + kTile);
    for (idx_t tj = 0; tj <= ti; ++tj) {
      const idx_t j0 = tj * kTile, j1 = std::min(n, j0 + kTile);
      for (idx_t i = i0; i < i1; ++i) {
        const bool di = P.dead[static_cast<std::size_t>(i)] != 0;
        for (idx_t j = j0; j < std::min(j1, i + 1); ++j) {
          double v;
          if (di || P.dead[static_cast<std::size_t>(j)] != 0) {
            v = i == j ? 1.0 : 0.0;
          } else {
            v = at(i, j) * inv_scale;
          }
          work[static_cast<std::size_t>(i * n + j)] = v;
          work[static_cast<std::size_t>(j * n + i)] = v;
        }
      }
    }
  });
  // Permute: H[p, q] = S[perm[p], perm[q]].
  P.H.resize(nn);
  for_row_tiles(n, [&](idx_t p) {
    const double* row = work.data() + P.perm[static_cast<std::size_t>(p)] * n;
    double* out = P.H.data() + p * n;
    for (idx_t q = 0; q < n; ++q) out[q] = row[P.perm[static_cast<std::size_t>(q)]];
  });

  // Damping: relative to the mean normalised diagonal, which is 1 by construction.
  P.U.assign(nn, 0.0f);
  std::string tried;
  double rel = params.percdamp;
  const double limit = params.max_percdamp * (1 + 1e-9);
  detail::BlasSingleThread blas1;
  for (;;) {
    // work = J (H + rel·I) J, J = reversal (column-major == row-major: symmetric).
    for_row_tiles(n, [&](idx_t a) {
      const double* src = P.H.data() + (n - 1 - a) * n;
      double* dst = work.data() + a * n;
      for (idx_t b = 0; b < n; ++b) dst[b] = src[n - 1 - b];
      dst[a] += rel;
    });
    if (!tried.empty()) tried += ", ";
    tried += detail::cat(rel);
    if (cholesky_lower_tiled(work.data(), n) && upper_inverse_factor(work.data(), n, P.U.data())) {
      P.damp = rel;
      return P;
    }
    rel = rel > 0 ? rel * 10 : 1e-6;
    VPTQ_CHECK_NUMERIC(rel <= limit, "prepare_hessian: H + damp·I is not positive definite for any damp up to "
                       "max_percdamp = ", params.max_percdamp, " × mean(diag(H)) (tried damp = ", tried,
                       " in units of mean(diag(H))); H does not look like a second-moment matrix E[x xᵀ] "
                       "(it is far from positive semi-definite)");
  }
}

// ---------------------------------------------------------------------------------------------
// proxy_loss

double proxy_loss(const float* W, const float* Wq, idx_t M, idx_t N, const double* H) {
  VPTQ_CHECK(M >= 1 && N >= 1, "proxy_loss: expected M >= 1 and N >= 1, got M = ", M, ", N = ", N);
  VPTQ_CHECK(W != nullptr && Wq != nullptr && H != nullptr, "proxy_loss: null pointer argument");
  // tr(D H Dᵀ) = Σ_ij H_ij G_ij with G = Dᵀ D (symmetric): half the flops of D·H, using the
  // lower triangle of G only: Σ_i H_ii G_ii + Σ_{i>j} (H_ij + H_ji) G_ij.
  const idx_t chunk = std::min(M, float_chunk_rows(N));
  std::vector<double> G(static_cast<std::size_t>(N * N), 0.0);  // lower triangle of Dᵀ D
  std::vector<double> D(static_cast<std::size_t>(chunk * N));   // [chunk, N] rows of W - Wq
  detail::BlasSingleThread blas1;
  for (idx_t r0 = 0; r0 < M; r0 += chunk) {
    const idx_t r = std::min(chunk, M - r0);
    for (idx_t i = 0; i < r * N; ++i) {
      D[static_cast<std::size_t>(i)] = static_cast<double>(W[r0 * N + i]) - static_cast<double>(Wq[r0 * N + i]);
    }
    syrk_lower_tiled(G.data(), D.data(), r, N);
  }
  std::vector<double> partial(static_cast<std::size_t>(num_tiles(N)), 0.0);
  parallel_for(num_tiles(N), [&](idx_t t) {
    double s = 0;
    for (idx_t i = t * kTile; i < std::min(N, (t + 1) * kTile); ++i) {
      const double* g = G.data() + i * N;
      for (idx_t j = 0; j < i; ++j) s += (H[i * N + j] + H[j * N + i]) * g[j];
      s += H[i * N + i] * g[i];
    }
    partial[static_cast<std::size_t>(t)] = s;
  });
  double total = 0;
  for (double s : partial) total += s;
  return total;
}

}  // namespace vptq
