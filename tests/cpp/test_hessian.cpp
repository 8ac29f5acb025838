// Hessian accumulation, preparation and proxy loss against straightforward
// double-precision references.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <stdexcept>
#include <vector>

#include "vptq/common.h"
#include "vptq/hessian.h"

namespace {

using vptq::idx_t;

/// Restores the library thread count at scope exit.
struct ThreadCountGuard {
  int prev = vptq::get_num_threads();
  ~ThreadCountGuard() { vptq::set_num_threads(prev); }
};

/// Correlated activations x [rows, n]: neighbouring channels mixed, uneven channel scales.
std::vector<float> correlated_rows(idx_t rows, idx_t n, std::uint64_t seed) {
  vptq::Rng rng(seed);
  std::vector<float> x(static_cast<std::size_t>(rows * n));
  for (idx_t r = 0; r < rows; ++r) {
    double prev = 0;
    for (idx_t j = 0; j < n; ++j) {
      const double z = 2 * rng.uniform() - 1;
      const double v = z + 0.9 * prev;
      prev = v;
      x[static_cast<std::size_t>(r * n + j)] = static_cast<float>(v * (1 + static_cast<double>(j % 7)));
    }
  }
  return x;
}

/// Naive Σ x xᵀ (double), full matrix.
std::vector<double> naive_sum(const std::vector<float>& x, idx_t rows, idx_t n) {
  std::vector<double> S(static_cast<std::size_t>(n * n), 0.0);
  for (idx_t r = 0; r < rows; ++r)
    for (idx_t i = 0; i < n; ++i)
      for (idx_t j = 0; j < n; ++j)
        S[i * n + j] += static_cast<double>(x[r * n + i]) * static_cast<double>(x[r * n + j]);
  return S;
}

/// E[x xᵀ] of correlated rows (a realistic, well-conditioned-enough SPD Hessian).
std::vector<double> correlated_hessian(idx_t n, idx_t rows, std::uint64_t seed) {
  vptq::HessianAccumulator acc(n);
  const auto x = correlated_rows(rows, n, seed);
  acc.add_batch(x.data(), rows);
  return acc.second_moment();
}

/// max |Uᵀ U (H + damp I) - I| in double.
double inverse_residual(const vptq::PreparedHessian& P) {
  const idx_t n = P.n;
  std::vector<double> UtU(static_cast<std::size_t>(n * n), 0.0);
  for (idx_t k = 0; k < n; ++k)
    for (idx_t i = k; i < n; ++i) {  // U is upper: U[k, i] != 0 only for i >= k
      const double uki = P.U[k * n + i];
      if (uki == 0) continue;
      for (idx_t j = k; j < n; ++j) UtU[i * n + j] += uki * static_cast<double>(P.U[k * n + j]);
    }
  double worst = 0;
  for (idx_t i = 0; i < n; ++i)
    for (idx_t j = 0; j < n; ++j) {
      double s = 0;
      for (idx_t k = 0; k < n; ++k) s += UtU[i * n + k] * (P.H[k * n + j] + (k == j ? P.damp : 0.0));
      worst = std::max(worst, std::fabs(s - (i == j ? 1.0 : 0.0)));
    }
  return worst;
}

TEST(HessianAccumulator, matches_naive_sum_over_odd_batches) {
  const idx_t n = 150;  // two column tiles, the second one partial
  vptq::HessianAccumulator acc(n);
  std::vector<float> all;
  idx_t total = 0;
  std::uint64_t seed = 1;
  for (idx_t rows : {idx_t{0}, idx_t{1}, idx_t{7}, idx_t{33}}) {
    const auto x = correlated_rows(rows, n, seed++);
    acc.add_batch(x.data(), rows);
    all.insert(all.end(), x.begin(), x.end());
    total += rows;
  }
  // A double batch too.
  const auto xf = correlated_rows(5, n, 99);
  std::vector<double> xd(xf.begin(), xf.end());
  acc.add_batch(xd.data(), 5);
  all.insert(all.end(), xf.begin(), xf.end());
  total += 5;

  EXPECT_EQ(acc.count(), total);
  EXPECT_EQ(acc.n(), n);
  const auto ref = naive_sum(all, total, n);
  const auto& S = acc.sum();
  for (idx_t i = 0; i < n; ++i)
    for (idx_t j = 0; j < n; ++j)
      ASSERT_NEAR(S[i * n + j], ref[i * n + j], 1e-10 * (1 + std::fabs(ref[i * n + j]))) << i << "," << j;
  const auto E = acc.second_moment();
  for (idx_t i = 0; i < n * n; ++i) ASSERT_NEAR(E[i], ref[i] / static_cast<double>(total), 1e-10 * (1 + std::fabs(ref[i])));
  // Exactly symmetric.
  for (idx_t i = 0; i < n; ++i)
    for (idx_t j = 0; j < i; ++j) ASSERT_EQ(S[i * n + j], S[j * n + i]);
}

TEST(HessianAccumulator, large_float_batch_is_chunked_correctly) {
  // More rows than one conversion chunk (2^21 / 600 = 3495 rows); checked on a sample of entries.
  const idx_t n = 600, rows = 3600;
  const auto x = correlated_rows(rows, n, 7);
  vptq::HessianAccumulator acc(n);
  acc.add_batch(x.data(), rows);
  const auto& S = acc.sum();
  vptq::Rng rng(3);
  for (int s = 0; s < 300; ++s) {
    const idx_t i = static_cast<idx_t>(rng.below(n)), j = s < n ? static_cast<idx_t>(s) : static_cast<idx_t>(rng.below(n));
    double ref = 0;
    for (idx_t r = 0; r < rows; ++r) ref += static_cast<double>(x[r * n + i]) * static_cast<double>(x[r * n + j]);
    ASSERT_NEAR(S[i * n + j], ref, 1e-10 * (1 + std::fabs(ref)));
  }
}

TEST(HessianAccumulator, merge_equals_single_accumulator) {
  const idx_t n = 131;
  const auto a = correlated_rows(20, n, 11), b = correlated_rows(9, n, 12);
  vptq::HessianAccumulator one(n), left(n), right(n);
  one.add_batch(a.data(), 20);
  one.add_batch(b.data(), 9);
  left.add_batch(a.data(), 20);
  right.add_batch(b.data(), 9);
  left.merge(right);
  EXPECT_EQ(left.count(), 29);
  const auto& s1 = one.sum();
  const auto& s2 = left.sum();
  for (idx_t i = 0; i < n * n; ++i) ASSERT_NEAR(s1[i], s2[i], 1e-12 * (1 + std::fabs(s1[i])));
  vptq::HessianAccumulator other(n + 1);
  EXPECT_THROW(left.merge(other), std::invalid_argument);
}

TEST(HessianAccumulator, rejects_bad_input_and_keeps_state) {
  EXPECT_THROW(vptq::HessianAccumulator(0), std::invalid_argument);
  vptq::HessianAccumulator acc(4);
  EXPECT_THROW((void)acc.second_moment(), std::invalid_argument);
  acc.add_batch(static_cast<const float*>(nullptr), 0);  // empty batch is fine
  EXPECT_EQ(acc.count(), 0);
  const float good[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  acc.add_batch(good, 2);
  const auto before = acc.sum();
  float bad[8] = {1, 2, 3, 4, 5, 6, 7, std::numeric_limits<float>::quiet_NaN()};
  EXPECT_THROW(acc.add_batch(bad, 2), std::invalid_argument);
  const double badd[4] = {1, std::numeric_limits<double>::infinity(), 0, 0};
  EXPECT_THROW(acc.add_batch(badd, 1), std::invalid_argument);
  EXPECT_THROW(acc.add_batch(good, -1), std::invalid_argument);
  EXPECT_EQ(acc.count(), 2);
  EXPECT_EQ(acc.sum(), before);
}

TEST(HessianAccumulator, identical_bits_for_any_thread_count) {
  ThreadCountGuard guard;
  const idx_t n = 300;
  const auto x = correlated_rows(40, n, 5);
  vptq::set_num_threads(1);
  vptq::HessianAccumulator a(n);
  a.add_batch(x.data(), 40);
  vptq::set_num_threads(2);
  vptq::HessianAccumulator b(n);
  b.add_batch(x.data(), 40);
  EXPECT_EQ(a.sum(), b.sum());
}

TEST(PrepareHessian, inverse_factor_reproduces_damped_inverse) {
  const idx_t n = 300;  // three Cholesky tiles: exercises panel solves and trailing updates
  const auto H = correlated_hessian(n, 500, 21);
  const auto P = vptq::prepare_hessian(H.data(), n);
  EXPECT_EQ(P.n, n);
  EXPECT_DOUBLE_EQ(P.damp, 0.01);
  double mean = 0;
  for (idx_t i = 0; i < n; ++i) mean += H[i * n + i];
  mean /= static_cast<double>(n);
  EXPECT_NEAR(P.scale, mean, 1e-12 * mean);
  for (idx_t i = 0; i < n; ++i) {
    EXPECT_GT(P.U[i * n + i], 0.0f);
    for (idx_t j = 0; j < i; ++j) ASSERT_EQ(P.U[i * n + j], 0.0f);
  }
  // H is the normalised matrix in permuted order.
  for (idx_t p = 0; p < n; ++p)
    for (idx_t q = 0; q < n; ++q)
      ASSERT_NEAR(P.H[p * n + q], H[P.perm[p] * n + P.perm[q]] / P.scale, 1e-15 * (1 + std::fabs(P.H[p * n + q])));
  EXPECT_LT(inverse_residual(P), 2e-3);
}

TEST(PrepareHessian, perm_is_stable_descending_argsort_of_diagonal) {
  const idx_t n = 9;
  const double d[n] = {2, 5, 2, 7, 0.5, 5, 2, 7, 1};
  std::vector<double> H(n * n, 0.0);
  for (idx_t i = 0; i < n; ++i) H[i * n + i] = d[i];
  const auto P = vptq::prepare_hessian(H.data(), n);
  const std::vector<idx_t> want = {3, 7, 1, 5, 0, 2, 6, 8, 4};
  EXPECT_EQ(P.perm, want);
  const double mean = std::accumulate(d, d + n, 0.0) / n;
  for (idx_t i = 0; i < n; ++i) EXPECT_DOUBLE_EQ(P.diag[i], d[i] / mean);
  vptq::HessianPrepParams no_order;
  no_order.act_order = false;
  const auto Q = vptq::prepare_hessian(H.data(), n, no_order);
  std::vector<idx_t> identity(n);
  std::iota(identity.begin(), identity.end(), idx_t{0});
  EXPECT_EQ(Q.perm, identity);
  // Diagonal H: U is diagonal with 1/sqrt(h + damp).
  for (idx_t i = 0; i < n; ++i)
    EXPECT_NEAR(Q.U[i * n + i], 1.0 / std::sqrt(d[i] / mean + 0.01), 1e-6);
}

TEST(PrepareHessian, dead_columns_become_unit_and_sort_by_one) {
  const idx_t n = 5;
  // Column 2 is dead (zero row and column).
  std::vector<double> H = {4, 1, 0, 0, 0,  //
                           1, 3, 0, 0, 0,  //
                           0, 0, 0, 0, 0,  //
                           0, 0, 0, 0.5, 0,  //
                           0, 0, 0, 0, 2.5};
  const auto P = vptq::prepare_hessian(H.data(), n);
  const double mean = 10.0 / 5;
  EXPECT_EQ(P.dead, (std::vector<std::uint8_t>{0, 0, 1, 0, 0}));
  EXPECT_DOUBLE_EQ(P.diag[2], 0.0);  // before the fix
  EXPECT_DOUBLE_EQ(P.diag[0], 4 / mean);
  // Fixed normalised diagonal: 2, 1.5, 1 (dead), 0.25, 1.25 -> order 0, 1, 4, 2, 3.
  EXPECT_EQ(P.perm, (std::vector<idx_t>{0, 1, 4, 2, 3}));
  const idx_t p_dead = 3;
  for (idx_t q = 0; q < n; ++q) {
    EXPECT_EQ(P.H[p_dead * n + q], q == p_dead ? 1.0 : 0.0);
    EXPECT_EQ(P.H[q * n + p_dead], q == p_dead ? 1.0 : 0.0);
  }
  EXPECT_LT(inverse_residual(P), 1e-5);
}

TEST(PrepareHessian, indefinite_matrix_gets_more_damping) {
  // Eigenvalues 2.05 and -0.05 (mean diagonal 1): 0.01 fails, 0.1 succeeds.
  const std::vector<double> H = {1, 1.05, 1.05, 1};
  const auto P = vptq::prepare_hessian(H.data(), 2);
  EXPECT_NEAR(P.damp, 0.1, 1e-12);
  EXPECT_LT(inverse_residual(P), 1e-5);
  vptq::HessianPrepParams strict;
  strict.max_percdamp = 0.05;
  EXPECT_THROW(vptq::prepare_hessian(H.data(), 2, strict), vptq::NumericalError);
}

TEST(PrepareHessian, zero_percdamp_on_definite_and_singular_matrices) {
  const idx_t n = 130;
  const auto H = correlated_hessian(n, 400, 8);
  vptq::HessianPrepParams p0;
  p0.percdamp = 0;
  const auto P = vptq::prepare_hessian(H.data(), n, p0);
  EXPECT_EQ(P.damp, 0.0);
  // Rank-1 matrix: 0 fails, 1e-6 onwards works.
  std::vector<double> R(16);
  const double v[4] = {1, 2, -1, 0.5};
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 4; ++j) R[i * 4 + j] = v[i] * v[j];
  const auto Q = vptq::prepare_hessian(R.data(), 4, p0);
  EXPECT_GT(Q.damp, 0.0);
  EXPECT_LE(Q.damp, 1e-3);
}

TEST(PrepareHessian, hopeless_or_invalid_input_throws) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const std::vector<double> far_indefinite = {1, 20, 20, 1};
  EXPECT_THROW(vptq::prepare_hessian(far_indefinite.data(), 2), vptq::NumericalError);
  const std::vector<double> negdef = {-1, 0, 0, -2};
  EXPECT_THROW(vptq::prepare_hessian(negdef.data(), 2), std::invalid_argument);
  const std::vector<double> with_nan = {1, nan, nan, 1};
  EXPECT_THROW(vptq::prepare_hessian(with_nan.data(), 2), std::invalid_argument);
  const std::vector<double> zero(9, 0.0);
  try {
    vptq::prepare_hessian(zero.data(), 3);
    FAIL() << "expected invalid_argument";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("all zero"), std::string::npos) << e.what();
  }
  const std::vector<double> asym = {1, 0.5, 0, 1};
  EXPECT_THROW(vptq::prepare_hessian(asym.data(), 2), std::invalid_argument);
  const std::vector<double> ok = {1, 0, 0, 1};
  vptq::HessianPrepParams bad;
  bad.percdamp = -0.1;
  EXPECT_THROW(vptq::prepare_hessian(ok.data(), 2, bad), std::invalid_argument);
  bad.percdamp = 1;
  bad.max_percdamp = 0.5;
  EXPECT_THROW(vptq::prepare_hessian(ok.data(), 2, bad), std::invalid_argument);
  EXPECT_THROW(vptq::prepare_hessian(ok.data(), 0), std::invalid_argument);
  EXPECT_THROW(vptq::prepare_hessian(nullptr, 2), std::invalid_argument);
}

TEST(PrepareHessian, identical_bits_for_any_thread_count) {
  ThreadCountGuard guard;
  const idx_t n = 300;
  const auto H = correlated_hessian(n, 350, 4);
  vptq::set_num_threads(1);
  const auto a = vptq::prepare_hessian(H.data(), n);
  vptq::set_num_threads(2);
  const auto b = vptq::prepare_hessian(H.data(), n);
  EXPECT_EQ(a.U, b.U);
  EXPECT_EQ(a.H, b.H);
  EXPECT_EQ(a.perm, b.perm);
}

TEST(ProxyLoss, matches_naive_trace) {
  const idx_t M = 37, N = 45;
  const auto H = correlated_hessian(N, 60, 2);
  vptq::Rng rng(9);
  std::vector<float> W(M * N), Wq(M * N);
  for (idx_t i = 0; i < M * N; ++i) {
    W[i] = static_cast<float>(rng.uniform() - 0.5);
    Wq[i] = W[i] + static_cast<float>(0.1 * (rng.uniform() - 0.5));
  }
  double ref = 0;
  for (idx_t r = 0; r < M; ++r)
    for (idx_t i = 0; i < N; ++i)
      for (idx_t j = 0; j < N; ++j)
        ref += (static_cast<double>(W[r * N + i]) - Wq[r * N + i]) * H[i * N + j] *
               (static_cast<double>(W[r * N + j]) - Wq[r * N + j]);
  const double got = vptq::proxy_loss(W.data(), Wq.data(), M, N, H.data());
  EXPECT_NEAR(got, ref, 1e-10 * std::fabs(ref));
  EXPECT_GT(got, 0.0);
  EXPECT_EQ(vptq::proxy_loss(W.data(), W.data(), M, N, H.data()), 0.0);
  EXPECT_THROW(vptq::proxy_loss(W.data(), Wq.data(), 0, N, H.data()), std::invalid_argument);

  ThreadCountGuard guard;
  vptq::set_num_threads(1);
  const double one = vptq::proxy_loss(W.data(), Wq.data(), M, N, H.data());
  vptq::set_num_threads(2);
  EXPECT_EQ(one, vptq::proxy_loss(W.data(), Wq.data(), M, N, H.data()));
}

}  // namespace
