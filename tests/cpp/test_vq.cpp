// VPTQ layer quantizer: agreement with a naive column-by-column reference,
// reductions to plain VQ, quality ordering, determinism and input checks.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "vptq/format.h"
#include "vptq/hessian.h"
#include "vptq/nearest.h"
#include "vptq/vq.h"

namespace {

using vptq::idx_t;

struct Problem {
  idx_t M, N;
  std::vector<float> W;   // [M, N]
  std::vector<double> H;  // [N, N]
};

/// Correlated, heavy-tailed synthetic layer: W rows with per-column scales, H = XᵀX/n
/// of activations with a few strong channels.
Problem make_problem(idx_t M, idx_t N, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::student_t_distribution<float> td(4.0f);
  Problem p{M, N, std::vector<float>(M * N), std::vector<double>(N * N, 0.0)};
  std::vector<float> colscale(N);
  for (idx_t j = 0; j < N; ++j) colscale[j] = 0.5f + std::abs(nd(rng));
  for (idx_t i = 0; i < M; ++i)
    for (idx_t j = 0; j < N; ++j) p.W[i * N + j] = 0.05f * td(rng) * colscale[j];
  const idx_t n = 4 * N;
  std::vector<double> X(n * N);
  std::vector<double> chan(N);
  for (idx_t j = 0; j < N; ++j) chan[j] = (j % 7 == 0) ? 5.0 : 1.0;
  for (idx_t t = 0; t < n; ++t) {
    const double shared = nd(rng);
    for (idx_t j = 0; j < N; ++j) X[t * N + j] = chan[j] * (0.7 * shared + nd(rng));
  }
  for (idx_t a = 0; a < N; ++a)
    for (idx_t b = 0; b < N; ++b) {
      double s = 0;
      for (idx_t t = 0; t < n; ++t) s += X[t * N + a] * X[t * N + b];
      p.H[a * N + b] = s / n;
    }
  return p;
}

vptq::VQParams small_params() {
  vptq::VQParams P;
  P.v = 4;
  P.k1 = 16;
  P.kmeans.max_iter = 20;
  P.block_size = 8;
  return P;
}

std::vector<float> dequant(const vptq::VQResult& r) {
  std::vector<float> out(r.layout.M * r.layout.N);
  vptq::dequantize(r.view(), out.data());
  return out;
}

double loss(const Problem& p, const std::vector<float>& Wq) {
  return vptq::proxy_loss(p.W.data(), Wq.data(), p.M, p.N, p.H.data());
}

/// Straightforward reference of the second-order pass (no groups/outliers/residual):
/// full matrix, column by column, immediate update of every later column.
std::vector<std::uint16_t> naive_pass(const Problem& p, const vptq::PreparedHessian& H, const vptq::VQResult& r,
                                      int v, idx_t k) {
  const idx_t M = p.M, N = p.N, R = (M + v - 1) / v;
  // Centred, permuted working matrix in "centred units" (norm-aware feedback).
  std::vector<double> Wc(N * R * v, 0.0);  // [N][R*v]
  std::vector<double> s(N);
  for (idx_t q = 0; q < N; ++q) {
    const idx_t j = H.perm[q];
    s[q] = r.scale[j];
    for (idx_t i = 0; i < M; ++i) Wc[q * R * v + i] = p.W[i * N + j] - r.bias[j];
  }
  std::vector<std::uint16_t> idx(R * N);
  std::vector<float> x(v);
  for (idx_t q = 0; q < N; ++q) {
    for (idx_t rb = 0; rb < R; ++rb) {
      for (int e = 0; e < v; ++e) x[e] = static_cast<float>(Wc[q * R * v + rb * v + e] / s[q]);
      std::int32_t a = 0;
      vptq::nearest_centroid_ref(x.data(), 1, v, r.centroids.data(), k, &a, nullptr);
      idx[rb * N + q] = static_cast<std::uint16_t>(a);
      for (int e = 0; e < v; ++e) {
        const idx_t row = rb * v + e;
        if (row >= M) continue;
        const double err = (Wc[q * R * v + row] - s[q] * r.centroids[a * v + e]) / H.U[q * N + q];
        for (idx_t t = q + 1; t < N; ++t) Wc[t * R * v + row] -= H.U[q * N + t] * err;
      }
    }
  }
  return idx;
}

TEST(VQ, matches_naive_column_by_column_reference) {
  const Problem p = make_problem(37, 40, 1);  // M not a multiple of v
  const auto H = vptq::prepare_hessian(p.H.data(), p.N);
  auto P = small_params();
  const auto r = vptq::vptq_quantize(p.W.data(), p.M, p.N, H, P);
  const auto ref = naive_pass(p, H, r, P.v, P.k1);
  ASSERT_EQ(ref.size(), r.indices.size());
  idx_t same = 0;
  for (std::size_t i = 0; i < ref.size(); ++i) same += ref[i] == r.indices[i];
  // Float32 lazy block updates vs double immediate updates may flip rare near-ties.
  EXPECT_GE(static_cast<double>(same) / ref.size(), 0.98);
}

TEST(VQ, identity_hessian_feedback_equals_plain_vq) {
  const Problem p = make_problem(32, 24, 2);
  std::vector<double> I(p.N * p.N, 0.0);
  for (idx_t j = 0; j < p.N; ++j) I[j * p.N + j] = 1.0;
  vptq::HessianPrepParams hp;
  hp.act_order = false;
  const auto H = vptq::prepare_hessian(I.data(), p.N, hp);
  auto P = small_params();
  P.enable_perm = false;
  const auto with_fb = vptq::vptq_quantize(p.W.data(), p.M, p.N, H, P);
  P.error_feedback = false;
  const auto plain = vptq::vptq_quantize(p.W.data(), p.M, p.N, H, P);
  EXPECT_EQ(with_fb.indices, plain.indices);
  EXPECT_EQ(with_fb.centroids, plain.centroids);
  EXPECT_TRUE(with_fb.perm.empty());
}

TEST(VQ, plain_vq_is_nearest_centroid_of_normalised_vectors) {
  const Problem p = make_problem(16, 12, 3);
  const auto H = vptq::prepare_hessian(p.H.data(), p.N);
  auto P = small_params();
  P.error_feedback = false;
  const auto r = vptq::vptq_quantize(p.W.data(), p.M, p.N, H, P);
  const idx_t R = p.M / P.v;
  for (idx_t q = 0; q < p.N; ++q) {
    const idx_t j = r.perm[q];
    for (idx_t rb = 0; rb < R; ++rb) {
      float x[4];
      for (int e = 0; e < 4; ++e) x[e] = (p.W[(rb * 4 + e) * p.N + j] - r.bias[j]) / r.scale[j];
      std::int32_t a = -1;
      float d = 0, dq = 0;
      vptq::nearest_centroid_ref(x, 1, 4, r.centroids.data(), P.k1, &a, &d);
      const std::uint16_t got = r.indices[rb * p.N + q];
      for (int e = 0; e < 4; ++e) dq += (x[e] - r.centroids[got * 4 + e]) * (x[e] - r.centroids[got * 4 + e]);
      EXPECT_LE(dq, d * (1 + 1e-5f) + 1e-7f);
    }
  }
}

TEST(VQ, second_order_pass_beats_plain_vq_and_residual_helps) {
  const Problem p = make_problem(64, 64, 4);
  const auto H = vptq::prepare_hessian(p.H.data(), p.N);
  auto P = small_params();
  P.error_feedback = false;
  const double plain = loss(p, dequant(vptq::vptq_quantize(p.W.data(), p.M, p.N, H, P)));
  P.error_feedback = true;
  const double vptq_loss = loss(p, dequant(vptq::vptq_quantize(p.W.data(), p.M, p.N, H, P)));
  P.k2 = 16;
  const double with_res = loss(p, dequant(vptq::vptq_quantize(p.W.data(), p.M, p.N, H, P)));
  EXPECT_LT(vptq_loss, 0.8 * plain);
  EXPECT_LT(with_res, 0.7 * vptq_loss);
}

TEST(VQ, outliers_groups_residual_layout_and_valid_weights) {
  const Problem p = make_problem(30, 50, 5);
  const auto H = vptq::prepare_hessian(p.H.data(), p.N);
  auto P = small_params();
  P.v = 6;
  P.k2 = 8;
  P.outlier_percent = 5;  // ceil(2.5) = 3 columns, + pad so that 47 % 4 -> 4 outliers
  P.v0 = 4;
  P.k0 = 8;
  P.group_num = 2;
  const auto r = vptq::vptq_quantize(p.W.data(), p.M, p.N, H, P);
  EXPECT_EQ(r.layout.outlier_size, 4);
  EXPECT_EQ(r.layout.group_size, 23);
  EXPECT_EQ(r.outlier_indices.size(), static_cast<std::size_t>(8 * 4));
  EXPECT_EQ(r.indices.size(), static_cast<std::size_t>(2 * 5 * 23));
  EXPECT_EQ(r.res_indices.size(), r.indices.size());
  EXPECT_NO_THROW(vptq::check_weights(r.view()));
  // Outliers are the columns with the largest Hessian diagonal.
  std::vector<idx_t> order(p.N);
  for (idx_t j = 0; j < p.N; ++j) order[j] = j;
  std::stable_sort(order.begin(), order.end(), [&](idx_t a, idx_t b) { return p.H[a * p.N + a] > p.H[b * p.N + b]; });
  for (idx_t q = 0; q < 4; ++q) EXPECT_EQ(r.perm[q], order[q]);
  const auto Wq = dequant(r);
  double err = 0, ref = 0;
  for (std::size_t i = 0; i < Wq.size(); ++i) err += (Wq[i] - p.W[i]) * (Wq[i] - p.W[i]), ref += p.W[i] * p.W[i];
  EXPECT_LT(err, 0.5 * ref);
}

TEST(VQ, identical_for_any_thread_count) {
  const Problem p = make_problem(80, 40, 6);
  const auto H = vptq::prepare_hessian(p.H.data(), p.N);
  auto P = small_params();
  P.k2 = 8;
  P.row_chunk = 16;
  vptq::set_num_threads(1);
  const auto a = vptq::vptq_quantize(p.W.data(), p.M, p.N, H, P);
  vptq::set_num_threads(2);
  const auto b = vptq::vptq_quantize(p.W.data(), p.M, p.N, H, P);
  EXPECT_EQ(a.indices, b.indices);
  EXPECT_EQ(a.res_indices, b.res_indices);
  EXPECT_EQ(a.centroids, b.centroids);
  EXPECT_EQ(a.res_centroids, b.res_centroids);
}

TEST(VQ, constant_column_reconstructs_exactly) {
  Problem p = make_problem(16, 12, 7);
  for (idx_t i = 0; i < p.M; ++i) p.W[i * p.N + 3] = 0.25f;
  const auto H = vptq::prepare_hessian(p.H.data(), p.N);
  const auto r = vptq::vptq_quantize(p.W.data(), p.M, p.N, H, small_params());
  const auto Wq = dequant(r);
  for (idx_t i = 0; i < p.M; ++i) EXPECT_FLOAT_EQ(Wq[i * p.N + 3], 0.25f);
  for (float x : Wq) EXPECT_TRUE(std::isfinite(x));
}

TEST(VQ, rejects_bad_input) {
  Problem p = make_problem(16, 12, 8);
  const auto H = vptq::prepare_hessian(p.H.data(), p.N);
  auto P = small_params();
  P.k1 = 64;  // only 4 * 12 = 48 vectors
  EXPECT_THROW(vptq::vptq_quantize(p.W.data(), p.M, p.N, H, P), std::invalid_argument);
  P = small_params();
  EXPECT_THROW(vptq::vptq_quantize(p.W.data(), p.M, p.N - 1, H, P), std::invalid_argument);
  P.enable_perm = false;  // H was prepared with act-order
  EXPECT_THROW(vptq::vptq_quantize(p.W.data(), p.M, p.N, H, P), std::invalid_argument);
  P = small_params();
  p.W[5] = std::nanf("");
  EXPECT_THROW(vptq::vptq_quantize(p.W.data(), p.M, p.N, H, P), std::invalid_argument);
}

}  // namespace
