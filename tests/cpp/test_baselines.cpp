// RTN and GPTQ scalar baselines: exact grids, error bounds, reduction of GPTQ to
// RTN for H = I, agreement with a naive column-by-column GPTQ, proxy-loss gain.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <stdexcept>
#include <vector>

#include "vptq/baselines.h"
#include "vptq/common.h"
#include "vptq/hessian.h"

namespace {

using vptq::idx_t;

struct ThreadCountGuard {
  int prev = vptq::get_num_threads();
  ~ThreadCountGuard() { vptq::set_num_threads(prev); }
};

std::vector<float> random_weights(idx_t M, idx_t N, std::uint64_t seed) {
  vptq::Rng rng(seed);
  std::vector<float> W(static_cast<std::size_t>(M * N));
  for (idx_t i = 0; i < M; ++i) {
    const double row_scale = 0.01 * (1 + static_cast<double>(i % 5));
    for (idx_t j = 0; j < N; ++j) W[i * N + j] = static_cast<float>(row_scale * (2 * rng.uniform() - 1));
  }
  return W;
}

/// E[x xᵀ] of strongly correlated activations with uneven channel energies.
std::vector<double> correlated_hessian(idx_t n, idx_t rows, std::uint64_t seed) {
  vptq::Rng rng(seed);
  std::vector<float> x(static_cast<std::size_t>(rows * n));
  for (idx_t r = 0; r < rows; ++r) {
    double prev = 0;
    for (idx_t j = 0; j < n; ++j) {
      const double v = (2 * rng.uniform() - 1) + 0.95 * prev;
      prev = v;
      x[r * n + j] = static_cast<float>(v * (1 + static_cast<double>(j % 5)));
    }
  }
  vptq::HessianAccumulator acc(n);
  acc.add_batch(x.data(), rows);
  return acc.second_moment();
}

std::vector<float> dequant(const vptq::ScalarQuantResult& r) {
  std::vector<float> out(static_cast<std::size_t>(r.M * r.N));
  r.dequantize(out.data());
  return out;
}

std::vector<double> identity(idx_t n) {
  std::vector<double> I(static_cast<std::size_t>(n * n), 0.0);
  for (idx_t i = 0; i < n; ++i) I[i * n + i] = 1.0;
  return I;
}

TEST(Rtn, values_on_the_grid_reconstruct_exactly) {
  const idx_t M = 6, N = 40;
  for (int bits : {2, 3, 4, 8}) {
    const int maxq = (1 << bits) - 1;
    vptq::Rng rng(static_cast<std::uint64_t>(bits));
    vptq::ScalarQuantParams p;
    p.bits = bits;
    p.group_size = 16;  // groups of 16, 16, 8
    std::vector<float> W(M * N);
    std::vector<std::uint8_t> want(M * N);
    for (idx_t i = 0; i < M; ++i)
      for (idx_t g = 0; g < 3; ++g) {
        const float s = std::ldexp(1.0f, -static_cast<int>(rng.below(6)) - 2);
        const int z = 1 + static_cast<int>(rng.below(static_cast<std::uint64_t>(std::max(1, maxq - 1))));
        for (idx_t j = g * 16; j < std::min(N, g * 16 + 16); ++j) {
          // First two columns of the group hit both ends of the grid.
          const int c = j == g * 16 ? 0 : j == g * 16 + 1 ? maxq : static_cast<int>(rng.below(maxq + 1));
          want[i * N + j] = static_cast<std::uint8_t>(c);
          W[i * N + j] = static_cast<float>(c - z) * s;
        }
      }
    const auto r = vptq::rtn_quantize(W.data(), M, N, p);
    EXPECT_EQ(r.num_groups, 3);
    EXPECT_EQ(r.codes, want) << "bits " << bits;
    EXPECT_EQ(dequant(r), W) << "bits " << bits;
  }
}

TEST(Rtn, error_is_at_most_half_a_step) {
  const idx_t M = 9, N = 77;
  const auto W = random_weights(M, N, 3);
  for (int bits = 1; bits <= 8; ++bits)
    for (idx_t gs : {idx_t{128}, idx_t{7}, idx_t{16}, idx_t{-1}}) {
      vptq::ScalarQuantParams p;
      p.bits = bits;
      p.group_size = gs;
      const auto r = vptq::rtn_quantize(W.data(), M, N, p);
      const idx_t egs = gs <= 0 ? N : std::min(gs, N);
      ASSERT_EQ(r.group_size, egs);
      ASSERT_EQ(r.num_groups, (N + egs - 1) / egs);
      const auto Wh = dequant(r);
      for (idx_t i = 0; i < M; ++i)
        for (idx_t j = 0; j < N; ++j) {
          ASSERT_EQ(r.g_idx[j], j / egs);
          const float s = r.scale[i * r.num_groups + r.g_idx[j]];
          const float z = r.zero[i * r.num_groups + r.g_idx[j]];
          ASSERT_GE(z, 0.0f);
          ASSERT_LE(z, static_cast<float>((1 << bits) - 1));
          ASSERT_EQ(z, std::round(z));
          ASSERT_LE(r.codes[i * N + j], (1 << bits) - 1);
          ASSERT_LE(std::fabs(W[i * N + j] - Wh[i * N + j]), 0.5f * s * (1 + 1e-5f) + 1e-12f)
              << "bits " << bits << " gs " << gs << " at " << i << "," << j;
        }
    }
}

TEST(Rtn, per_channel_and_constant_groups) {
  const idx_t M = 4, N = 6;
  // Rows: constant positive, constant negative, all zero, ordinary.
  const std::vector<float> W = {0.3f, 0.3f, 0.3f, 0.3f, 0.3f, 0.3f,        //
                                -1.7f, -1.7f, -1.7f, -1.7f, -1.7f, -1.7f,  //
                                0, 0, 0, 0, 0, 0,                          //
                                0.1f, -0.2f, 0.3f, 0.05f, 0, -0.1f};
  for (int bits : {1, 2, 8}) {
    vptq::ScalarQuantParams p;
    p.bits = bits;
    p.group_size = 0;
    const auto r = vptq::rtn_quantize(W.data(), M, N, p);
    EXPECT_EQ(r.num_groups, 1);
    EXPECT_EQ(r.group_size, N);
    const auto Wh = dequant(r);
    for (idx_t j = 0; j < 3 * N; ++j) EXPECT_EQ(Wh[j], W[j]) << "bits " << bits << " j " << j;
    for (idx_t j = 3 * N; j < 4 * N; ++j) EXPECT_LE(std::fabs(Wh[j] - W[j]), 0.5f * r.scale[3] * 1.00001f);
  }
}

TEST(Rtn, rejects_bad_arguments) {
  const auto W = random_weights(2, 8, 1);
  vptq::ScalarQuantParams p;
  p.bits = 0;
  EXPECT_THROW(vptq::rtn_quantize(W.data(), 2, 8, p), std::invalid_argument);
  p.bits = 9;
  EXPECT_THROW(vptq::rtn_quantize(W.data(), 2, 8, p), std::invalid_argument);
  p.bits = 2;
  EXPECT_THROW(vptq::rtn_quantize(W.data(), 0, 8, p), std::invalid_argument);
  EXPECT_THROW(vptq::rtn_quantize(nullptr, 2, 8, p), std::invalid_argument);
  auto bad = W;
  bad[5] = std::numeric_limits<float>::infinity();
  EXPECT_THROW(vptq::rtn_quantize(bad.data(), 2, 8, p), std::invalid_argument);
}

TEST(Gptq, identity_hessian_reduces_to_rtn) {
  const idx_t M = 40, N = 50;
  const auto W = random_weights(M, N, 5);
  const auto I = identity(N);
  for (bool act : {false, true}) {
    vptq::HessianPrepParams hp;
    hp.act_order = act;
    const auto P = vptq::prepare_hessian(I.data(), N, hp);
    for (idx_t gs : {idx_t{8}, idx_t{16}, idx_t{-1}}) {
      vptq::ScalarQuantParams p;
      p.bits = 3;
      p.group_size = gs;
      p.block_size = 5;  // not aligned with the groups
      const auto g = vptq::gptq_quantize(W.data(), M, N, P, p);
      const auto r = vptq::rtn_quantize(W.data(), M, N, p);
      EXPECT_EQ(g.codes, r.codes) << "act " << act << " gs " << gs;
      EXPECT_EQ(g.scale, r.scale);
      EXPECT_EQ(g.zero, r.zero);
      EXPECT_EQ(g.g_idx, r.g_idx);
    }
  }
}

/// Straightforward GPTQ: one column at a time in double, immediate update of every later column.
std::vector<double> naive_gptq_dequant(const std::vector<float>& W, idx_t M, idx_t N, const vptq::PreparedHessian& P,
                                       int bits, idx_t gs) {
  const int maxq = (1 << bits) - 1;
  std::vector<double> out(static_cast<std::size_t>(M * N));
  for (idx_t i = 0; i < M; ++i) {
    std::vector<double> w(N);
    for (idx_t p = 0; p < N; ++p) w[p] = P.dead[P.perm[p]] ? 0.0 : W[i * N + P.perm[p]];
    double scale = 1, zero = 0;
    for (idx_t p = 0; p < N; ++p) {
      if (p % gs == 0) {
        const idx_t e = std::min(N, p + gs);
        const double lo = std::min(0.0, *std::min_element(w.begin() + p, w.begin() + e));
        const double hi = std::max(0.0, *std::max_element(w.begin() + p, w.begin() + e));
        scale = (hi - lo) / maxq;
        zero = std::nearbyint(-lo / scale);
      }
      const double q = (std::clamp(std::nearbyint(w[p] / scale) + zero, 0.0, double(maxq)) - zero) * scale;
      out[i * N + P.perm[p]] = q;
      const double err = (w[p] - q) / P.U[p * N + p];
      for (idx_t c = p + 1; c < N; ++c) w[c] -= err * P.U[p * N + c];
    }
  }
  return out;
}

TEST(Gptq, matches_naive_column_loop_and_beats_rtn) {
  const idx_t M = 48, N = 160;
  const auto W = random_weights(M, N, 8);
  const auto H = correlated_hessian(N, 400, 9);
  const auto P = vptq::prepare_hessian(H.data(), N);
  vptq::ScalarQuantParams p;
  p.bits = 3;
  p.group_size = 32;
  p.block_size = 48;
  const auto g = vptq::gptq_quantize(W.data(), M, N, P, p);
  const auto Wg = dequant(g);
  const auto ref = naive_gptq_dequant(W, M, N, P, p.bits, p.group_size);
  idx_t same = 0;
  for (idx_t i = 0; i < M * N; ++i) same += std::fabs(Wg[i] - ref[i]) < 1e-6 * (1 + std::fabs(ref[i]));
  EXPECT_GT(static_cast<double>(same), 0.97 * static_cast<double>(M * N));
  std::vector<float> reff(ref.begin(), ref.end());
  const double loss_g = vptq::proxy_loss(W.data(), Wg.data(), M, N, H.data());
  const double loss_ref = vptq::proxy_loss(W.data(), reff.data(), M, N, H.data());
  EXPECT_NEAR(loss_g, loss_ref, 0.03 * loss_ref);
  // GPTQ's error feedback clearly wins over RTN on correlated inputs.
  const auto r = vptq::rtn_quantize(W.data(), M, N, p);
  const double loss_r = vptq::proxy_loss(W.data(), dequant(r).data(), M, N, H.data());
  EXPECT_LT(loss_g, 0.7 * loss_r) << "gptq " << loss_g << " rtn " << loss_r;
  // Act-order bookkeeping: groups are consecutive in permuted order.
  for (idx_t q = 0; q < N; ++q) EXPECT_EQ(g.g_idx[P.perm[q]], q / p.group_size);
}

TEST(Gptq, dead_columns_are_zeroed) {
  const idx_t M = 8, N = 12;
  auto H = correlated_hessian(N, 100, 4);
  for (idx_t q = 0; q < N; ++q) H[3 * N + q] = H[q * N + 3] = 0.0;  // column 3 never sees input
  const auto P = vptq::prepare_hessian(H.data(), N);
  const auto W = random_weights(M, N, 2);
  vptq::ScalarQuantParams p;
  p.bits = 2;
  p.group_size = 4;
  const auto Wh = dequant(vptq::gptq_quantize(W.data(), M, N, P, p));
  for (idx_t i = 0; i < M; ++i) EXPECT_EQ(Wh[i * N + 3], 0.0f);
}

TEST(Gptq, identical_bits_for_any_thread_count) {
  ThreadCountGuard guard;
  const idx_t M = 100, N = 96;
  const auto W = random_weights(M, N, 12);
  const auto H = correlated_hessian(N, 300, 13);
  const auto P = vptq::prepare_hessian(H.data(), N);
  vptq::ScalarQuantParams p;
  p.bits = 2;
  p.group_size = 32;
  p.block_size = 32;
  vptq::set_num_threads(1);
  const auto a = vptq::gptq_quantize(W.data(), M, N, P, p);
  vptq::set_num_threads(2);
  const auto b = vptq::gptq_quantize(W.data(), M, N, P, p);
  EXPECT_EQ(a.codes, b.codes);
  EXPECT_EQ(a.scale, b.scale);
  EXPECT_EQ(a.zero, b.zero);
}

TEST(Gptq, rejects_mismatched_hessian_and_bad_params) {
  const auto W = random_weights(4, 8, 1);
  const auto I7 = identity(7);
  const auto P7 = vptq::prepare_hessian(I7.data(), 7);
  vptq::ScalarQuantParams p;
  EXPECT_THROW(vptq::gptq_quantize(W.data(), 4, 8, P7, p), std::invalid_argument);
  const auto I8 = identity(8);
  auto P8 = vptq::prepare_hessian(I8.data(), 8);
  p.block_size = 0;
  EXPECT_THROW(vptq::gptq_quantize(W.data(), 4, 8, P8, p), std::invalid_argument);
  p.block_size = 128;
  P8.perm[0] = P8.perm[1];
  EXPECT_THROW(vptq::gptq_quantize(W.data(), 4, 8, P8, p), std::invalid_argument);
}

TEST(ScalarQuantResult, dequantize_follows_the_formula) {
  vptq::ScalarQuantResult r;
  r.M = 2;
  r.N = 3;
  r.bits = 2;
  r.group_size = 2;
  r.num_groups = 2;
  r.codes = {0, 3, 1, 2, 2, 3};
  r.scale = {0.5f, 2.0f, 0.25f, 1.0f};
  r.zero = {1, 2, 0, 3};
  r.g_idx = {1, 0, 0};
  const auto out = dequant(r);
  const std::vector<float> want = {(0 - 2) * 2.0f, (3 - 1) * 0.5f, (1 - 1) * 0.5f,  //
                                   (2 - 3) * 1.0f, (2 - 0) * 0.25f, (3 - 0) * 0.25f};
  EXPECT_EQ(out, want);
  r.g_idx[0] = 2;
  std::vector<float> buf(6);
  EXPECT_THROW(r.dequantize(buf.data()), std::invalid_argument);
}

}  // namespace
