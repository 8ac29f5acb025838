// GemvPlan: scalar reference vs dense dequantize-then-matmul, every available SIMD
// level vs scalar (bound from gemv.h), thread-count determinism, bad input.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/gemv_kernels.h"
#include "vptq/common.h"
#include "vptq/format.h"
#include "vptq/gemv.h"
#include "vptq/simd.h"

namespace {

using vptq::idx_t;

enum class Round { None, F16, BF16 };

float round_bf16(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  u &= 0xffff0000u;
  // Into a local, not back into the parameter: GCC 12 at -O2 with ASan+UBSan returned
  // the unmodified parameter when the memcpy wrote into it.
  float r;
  std::memcpy(&r, &u, sizeof(r));
  return r;
}

float round_f16(float f) {
  // Values in [-2, 2]: keep 10 mantissa bits relative to the exponent (exact in fp16).
  if (f == 0.0f) return 0.0f;
  int e = 0;
  std::frexp(f, &e);
  const float q = std::ldexp(1.0f, std::max(e - 11, -24));  // fp16 subnormal spacing 2^-24
  return std::nearbyint(f / q) * q;
}

/// Random valid VQ weights owning their arrays.
struct RandomWeights {
  vptq::VQLayout L;
  std::vector<float> cb, rcb, ocb, scale, bias, lbias;
  std::vector<std::uint16_t> idx, ridx, oidx;
  std::vector<idx_t> perm;

  RandomWeights(idx_t M, idx_t N, int v, idx_t k1, idx_t k2, double opct, int v0, idx_t k0, int G,
                std::uint64_t seed, Round round = Round::None) {
    L = vptq::make_layout(M, N, v, k1, k2, opct, v0, k0, G);
    vptq::Rng rng(seed);
    auto rnd = [&](float mult = 1.0f) {
      const float f = static_cast<float>(rng.uniform() * 2.0 - 1.0) * mult;
      return round == Round::F16 ? round_f16(f) : round == Round::BF16 ? round_bf16(f) : f;
    };
    cb.resize(static_cast<std::size_t>(G * k1 * v));
    for (auto& f : cb) f = rnd();
    if (k2 > 0) {
      rcb.resize(static_cast<std::size_t>(G * k2 * v));
      for (auto& f : rcb) f = rnd(0.25f);
    }
    const idx_t nb = L.num_indices();
    idx.resize(static_cast<std::size_t>(G * nb * L.group_size));
    for (auto& i : idx) i = static_cast<std::uint16_t>(rng.below(static_cast<std::uint64_t>(k1)));
    if (k2 > 0) {
      ridx.resize(idx.size());
      for (auto& i : ridx) i = static_cast<std::uint16_t>(rng.below(static_cast<std::uint64_t>(k2)));
    }
    if (L.k0 > 0) {
      ocb.resize(static_cast<std::size_t>(L.k0 * L.v0));
      for (auto& f : ocb) f = rnd(2.0f);
      oidx.resize(static_cast<std::size_t>(L.num_outlier_indices() * L.outlier_size));
      for (auto& i : oidx) i = static_cast<std::uint16_t>(rng.below(static_cast<std::uint64_t>(L.k0)));
    }
    perm.resize(static_cast<std::size_t>(N));
    for (idx_t j = 0; j < N; ++j) perm[static_cast<std::size_t>(j)] = j;
    for (idx_t j = N - 1; j > 0; --j)
      std::swap(perm[static_cast<std::size_t>(j)], perm[rng.below(static_cast<std::uint64_t>(j + 1))]);
    scale.resize(static_cast<std::size_t>(N));
    bias.resize(static_cast<std::size_t>(N));
    for (auto& f : scale) f = static_cast<float>(0.5 + rng.uniform());
    for (auto& f : bias) f = static_cast<float>(rng.uniform() - 0.5);
    lbias.resize(static_cast<std::size_t>(M));
    for (auto& f : lbias) f = static_cast<float>(rng.uniform() - 0.5);
  }

  vptq::VQWeightsView view() const {
    vptq::VQWeightsView w;
    w.layout = L;
    w.centroids = cb.data();
    w.res_centroids = L.k2 > 0 ? rcb.data() : nullptr;
    w.outlier_centroids = L.k0 > 0 ? ocb.data() : nullptr;
    w.indices = idx.data();
    w.res_indices = L.k2 > 0 ? ridx.data() : nullptr;
    w.outlier_indices = L.k0 > 0 ? oidx.data() : nullptr;
    w.perm = perm.data();
    w.scale = scale.data();
    w.bias = bias.data();
    return w;
  }
};

std::vector<float> random_x(idx_t batch, idx_t N, std::uint64_t seed) {
  vptq::Rng rng(seed);
  std::vector<float> x(static_cast<std::size_t>(batch * N));
  for (auto& f : x) f = static_cast<float>(rng.uniform() * 2.0 - 1.0);
  return x;
}

/// Dense reference in double from vptq::dequantize; also returns the magnitude
/// Σ_j |x_j · Ŵ_ij| + |bias_i| per output for the error bound.
void dense_reference(const RandomWeights& W, const std::vector<float>& x, idx_t batch, bool with_lbias,
                     std::vector<double>* ref, std::vector<double>* mag) {
  const idx_t M = W.L.M, N = W.L.N;
  std::vector<float> dense(static_cast<std::size_t>(M * N));
  vptq::dequantize(W.view(), dense.data());
  ref->assign(static_cast<std::size_t>(batch * M), 0.0);
  mag->assign(static_cast<std::size_t>(batch * M), 0.0);
  for (idx_t b = 0; b < batch; ++b)
    for (idx_t i = 0; i < M; ++i) {
      double s = with_lbias ? W.lbias[static_cast<std::size_t>(i)] : 0.0;
      double m = std::fabs(s);
      for (idx_t j = 0; j < N; ++j) {
        const double t = static_cast<double>(x[static_cast<std::size_t>(b * N + j)]) * dense[static_cast<std::size_t>(i * N + j)];
        s += t;
        // magnitude of the plan's terms: |x s q| and |x bias| per column
        const float sc = W.scale[static_cast<std::size_t>(j)];
        const float bi = W.bias[static_cast<std::size_t>(j)];
        const double q = (dense[static_cast<std::size_t>(i * N + j)] - bi) / sc;
        m += std::fabs(x[static_cast<std::size_t>(b * N + j)] * sc * q) + std::fabs(x[static_cast<std::size_t>(b * N + j)] * bi);
      }
      (*ref)[static_cast<std::size_t>(b * M + i)] = s;
      (*mag)[static_cast<std::size_t>(b * M + i)] = m;
    }
}

struct Config {
  int v;
  idx_t k1, k2;
  bool outliers;
  int G;
  std::string name() const {
    return "v" + std::to_string(v) + "-k" + std::to_string(k1) + "-" + std::to_string(k2) +
           (outliers ? "-out" : "") + "-G" + std::to_string(G);
  }
};

/// Every v with small codebooks (residual on/off, outliers on/off, 1 or 4 groups), plus
/// 4096-entry codebooks on a few shapes (kept small: the suite also runs under ASan).
std::vector<Config> all_configs() {
  std::vector<Config> cs;
  for (int v : {2, 4, 6, 8, 12, 16})
    for (idx_t k1 : {16, 256})
      for (idx_t k2 : {0, 16})
        for (bool o : {false, true})
          for (int G : {1, 4}) cs.push_back({v, k1, k2, o, G});
  cs.push_back({6, 4096, 0, false, 1});
  cs.push_back({12, 4096, 4096, true, 1});
  cs.push_back({8, 4096, 256, true, 4});
  return cs;
}

RandomWeights make_weights(const Config& c, idx_t M, idx_t N, std::uint64_t seed, Round r = Round::None) {
  return RandomWeights(M, N, c.v, c.k1, c.k2, c.outliers ? 10.0 : 0.0, c.outliers ? 4 : 0, c.outliers ? 64 : 0, c.G,
                       seed, r);
}

/// Worst-case error bound of gemv.h: 2 (n + 2) 2^-24 · magnitude.
double simd_bound(idx_t n_terms, double mag) { return 2.0 * static_cast<double>(n_terms + 2) * 0x1.0p-24 * mag + 1e-30; }

std::vector<vptq::SimdLevel> simd_levels() { return {vptq::SimdLevel::AVX2, vptq::SimdLevel::AVX512}; }

class ThreadGuard {
 public:
  ThreadGuard() : n_(vptq::get_num_threads()) {}
  ~ThreadGuard() { vptq::set_num_threads(n_); }

 private:
  int n_;
};

TEST(Gemv, scalar_matches_dense_dequantize_then_matmul) {
  std::uint64_t seed = 1;
  for (const Config& c : all_configs()) {
    const idx_t M = 37, N = 40;
    RandomWeights W = make_weights(c, M, N, ++seed);
    vptq::GemvPlan plan(W.view(), W.lbias.data());
    for (idx_t batch : {1, 3}) {
      const auto x = random_x(batch, N, seed * 7);
      std::vector<float> y(static_cast<std::size_t>(batch * M));
      plan.forward(x.data(), batch, y.data(), vptq::SimdLevel::Scalar);
      std::vector<double> ref, mag;
      dense_reference(W, x, batch, true, &ref, &mag);
      for (std::size_t i = 0; i < y.size(); ++i)
        ASSERT_LE(std::fabs(y[i] - ref[i]), 4.0 * simd_bound(2 * N, mag[i])) << c.name() << " batch " << batch << " i " << i;
    }
  }
}

TEST(Gemv, simd_levels_match_scalar_within_bound) {
  bool ran = false;
  for (vptq::SimdLevel level : simd_levels()) {
    if (!vptq::simd_level_supported(level)) continue;
    ran = true;
    std::uint64_t seed = 100;
    for (const Config& c : all_configs()) {
      const idx_t M = c.v == 6 ? 61 : 45, N = c.G == 4 ? 44 : 9;  // M not a multiple of v; tiny N
      RandomWeights W = make_weights(c, M, N, ++seed);
      vptq::GemvPlan plan(W.view(), W.lbias.data());
      for (idx_t batch : {1, 2, 3, 7, 8, 17}) {  // direct 1/2/3-row tiles; histogram form, 2 chunks
        const auto x = random_x(batch, N, seed * 13 + static_cast<std::uint64_t>(batch));
        std::vector<float> ys(static_cast<std::size_t>(batch * M)), yv(ys.size());
        plan.forward(x.data(), batch, ys.data(), vptq::SimdLevel::Scalar);
        plan.forward(x.data(), batch, yv.data(), level);
        std::vector<double> ref, mag;
        dense_reference(W, x, batch, true, &ref, &mag);
        for (std::size_t i = 0; i < ys.size(); ++i)
          ASSERT_LE(std::fabs(yv[i] - ys[i]), simd_bound(2 * N + (batch >= 8 ? c.k1 + c.k2 : 0), mag[i]))
              << vptq::simd_level_name(level) << " " << c.name() << " batch " << batch << " i " << i;
      }
    }
  }
  if (!ran) GTEST_SKIP() << "no SIMD level (AVX2/AVX-512) supported on this CPU";
}

TEST(Gemv, avx512_matches_scalar) {
  if (!vptq::simd_level_supported(vptq::SimdLevel::AVX512))
    GTEST_SKIP() << "AVX-512 not supported on this CPU: the AVX-512 kernel is compiled but not run";
  RandomWeights W(70, 48, 8, 256, 256, 5.0, 4, 16, 2, 9);
  vptq::GemvPlan plan(W.view());
  for (idx_t batch : {1, 4, 5}) {
    const auto x = random_x(batch, 48, 3);
    std::vector<float> ys(static_cast<std::size_t>(batch * 70)), yv(ys.size());
    plan.forward(x.data(), batch, ys.data(), vptq::SimdLevel::Scalar);
    plan.forward(x.data(), batch, yv.data(), vptq::SimdLevel::AVX512);
    for (std::size_t i = 0; i < ys.size(); ++i) ASSERT_NEAR(yv[i], ys[i], 1e-4f);
  }
}

TEST(Gemv, large_codebooks_use_exact_compact_storage) {
  struct Case {
    Round round;
    idx_t k1, k2;
    int v;
    const char* storage;
  };
  for (const Case& cs : {Case{Round::F16, 65536, 0, 8, "f16"}, Case{Round::BF16, 65536, 0, 8, "bf16"},
                         Case{Round::None, 16384, 0, 8, "f32"}, Case{Round::F16, 4096, 4096, 12, "f16"},
                         Case{Round::F16, 256, 0, 8, "f32"}}) {
    RandomWeights W(50, 16, cs.v, cs.k1, cs.k2, 0.0, 0, 0, 1, 77);
    // re-create with rounding (constructor draws the same random stream)
    RandomWeights Wr(50, 16, cs.v, cs.k1, cs.k2, 0.0, 0, 0, 1, 77, cs.round);
    vptq::GemvPlan plan(Wr.view(), Wr.lbias.data());
    EXPECT_EQ(plan.codebook_storage(), cs.storage) << cs.k1 << " v" << cs.v;
    // lossless: the plan's dense reconstruction equals vptq::dequantize exactly
    std::vector<float> a(50 * 16), b(50 * 16);
    plan.dequantize(a.data());
    vptq::dequantize(Wr.view(), b.data());
    for (std::size_t i = 0; i < a.size(); ++i) ASSERT_EQ(a[i], b[i]) << cs.storage << " i " << i;
    const auto x = random_x(3, 16, 5);
    std::vector<float> ys(3 * 50), yv(3 * 50);
    plan.forward(x.data(), 3, ys.data(), vptq::SimdLevel::Scalar);
    std::vector<double> ref, mag;
    dense_reference(Wr, x, 3, true, &ref, &mag);
    for (std::size_t i = 0; i < ys.size(); ++i) ASSERT_LE(std::fabs(ys[i] - ref[i]), 4.0 * simd_bound(32, mag[i]));
    for (vptq::SimdLevel level : simd_levels()) {
      if (!vptq::simd_level_supported(level)) continue;
      plan.forward(x.data(), 3, yv.data(), level);
      for (std::size_t i = 0; i < ys.size(); ++i) ASSERT_LE(std::fabs(yv[i] - ys[i]), simd_bound(32, mag[i]));
    }
  }
}

TEST(Gemv, plan_dequantize_equals_format_dequantize) {
  for (const Config& c : {Config{12, 4096, 4096, true, 4}, Config{6, 256, 0, false, 1}, Config{3, 16, 16, true, 2}}) {
    RandomWeights W = make_weights(c, 29, 44, 5);
    vptq::GemvPlan plan(W.view());
    std::vector<float> a(29 * 44), b(29 * 44);
    plan.dequantize(a.data());
    vptq::dequantize(W.view(), b.data());
    for (std::size_t i = 0; i < a.size(); ++i) ASSERT_EQ(a[i], b[i]) << c.name();
  }
}

TEST(Gemv, results_bit_identical_for_any_thread_count) {
  ThreadGuard guard;
  RandomWeights W(700, 96, 8, 256, 256, 5.0, 4, 64, 2, 11);
  vptq::GemvPlan plan(W.view(), W.lbias.data());
  const auto x = random_x(5, 96, 12);
  std::vector<vptq::SimdLevel> levels{vptq::SimdLevel::Scalar};
  for (vptq::SimdLevel l : simd_levels())
    if (vptq::simd_level_supported(l)) levels.push_back(l);
  for (vptq::SimdLevel level : levels) {
    std::vector<float> y1(5 * 700), y2(5 * 700);
    vptq::set_num_threads(1);
    plan.forward(x.data(), 5, y1.data(), level);
    vptq::set_num_threads(2);
    plan.forward(x.data(), 5, y2.data(), level);
    EXPECT_EQ(0, std::memcmp(y1.data(), y2.data(), y1.size() * sizeof(float))) << vptq::simd_level_name(level);
  }
}

TEST(Gemv, batch_rows_are_independent) {
  // row b of a batched call equals a batch-1 call on that row, for every level.
  RandomWeights W(64, 32, 8, 16, 0, 0.0, 0, 0, 1, 21);
  vptq::GemvPlan plan(W.view());
  const auto x = random_x(7, 32, 22);
  std::vector<vptq::SimdLevel> levels{vptq::SimdLevel::Scalar};
  for (vptq::SimdLevel l : simd_levels())
    if (vptq::simd_level_supported(l)) levels.push_back(l);
  for (vptq::SimdLevel level : levels) {
    std::vector<float> y(7 * 64), y1(64);
    plan.forward(x.data(), 7, y.data(), level);
    for (idx_t b = 0; b < 7; ++b) {
      plan.forward(x.data() + b * 32, 1, y1.data(), level);
      for (idx_t i = 0; i < 64; ++i) ASSERT_EQ(y[static_cast<std::size_t>(b * 64 + i)], y1[static_cast<std::size_t>(i)]);
    }
  }
}

TEST(Gemv, buffered_batches_equal_batch_one_rows_bit_for_bit) {
  // fp16-exact codebooks with a residual get the L1-buffered form for batches (from 8
  // rows for k <= 4096, from 4 for larger codebooks); it keeps the direct kernel's
  // per-output order, so every row equals a batch-1 call exactly. Odd M (v = 12 does
  // not divide it), outliers (k0 = 2048: too large for the histogram form, which
  // regroups sums), two groups; k = 8192 > 4096 exercises the 4-row switch (its
  // residual codebook, 64 KB, keeps it out of the sorted layout).
  struct Case { int v; idx_t k1, k2, batch; };
  for (const Case& c : {Case{12, 4096, 4096, 9}, Case{8, 8192, 4096, 5}}) {
    RandomWeights W(61, 80, c.v, c.k1, c.k2, 5.0, 4, 2048, 2, 31, Round::F16);
    vptq::GemvPlan plan(W.view(), W.lbias.data());
    ASSERT_EQ(plan.codebook_storage(), "f16");
    ASSERT_EQ(plan.sorted_sections(), 0);
    const auto x = random_x(c.batch, 80, 32);
    for (vptq::SimdLevel level : simd_levels()) {
      if (!vptq::simd_level_supported(level)) continue;
      std::vector<float> y(static_cast<std::size_t>(c.batch * 61)), y1(61);
      plan.forward(x.data(), c.batch, y.data(), level);
      for (idx_t b = 0; b < c.batch; ++b) {
        plan.forward(x.data() + b * 80, 1, y1.data(), level);
        for (idx_t i = 0; i < 61; ++i)
          ASSERT_EQ(y[static_cast<std::size_t>(b * 61 + i)], y1[static_cast<std::size_t>(i)])
              << vptq::simd_level_name(level) << " v" << c.v << " batch row " << b << " output " << i;
      }
    }
  }
}

TEST(Gemv, sorted_layout_matches_direct_layout) {
  // Codebooks beyond ~L1 (no residual, or one that fits L1) take the sorted layout:
  // lookups bucketed by codebook chunk, summed per (chunk, block) list. Compared with
  // the same plan built in the direct layout: within the bound (the sums are regrouped,
  // at most one extra rounding per chunk), bit-identical across thread counts, every
  // batch row equal to a batch-1 call, and the same dense reconstruction. Several tiles
  // (M = 1100: 138 blocks of 8), M not a multiple of v, outliers (direct) + 2 groups.
  ThreadGuard guard;
  struct Case { int v; idx_t k1, k2; Round round; int sorted; };
  for (const Case& c : {Case{8, 65536, 0, Round::F16, 2}, Case{6, 16384, 256, Round::None, 2},
                        Case{16, 8192, 0, Round::None, 2}, Case{12, 8192, 64, Round::BF16, 2}}) {
    const idx_t M = 1100, N = 300;
    RandomWeights W(M, N, c.v, c.k1, c.k2, 5.0, 4, 16, 2, 71 + static_cast<std::uint64_t>(c.v), c.round);
    vptq::GemvPlan sorted(W.view(), W.lbias.data());
    vptq::GemvOptions direct_opt;
    direct_opt.sorted_min_codebook_bytes = 0;
    vptq::GemvPlan direct(W.view(), W.lbias.data(), direct_opt);
    const std::string name = "v" + std::to_string(c.v) + "-k" + std::to_string(c.k1) + "-" + std::to_string(c.k2);
    ASSERT_EQ(sorted.sorted_sections(), c.sorted) << name;
    ASSERT_EQ(direct.sorted_sections(), 0);
    std::vector<float> a(static_cast<std::size_t>(M * N)), b(a.size());
    sorted.dequantize(a.data());
    vptq::dequantize(W.view(), b.data());
    ASSERT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * sizeof(float))) << name;
    std::vector<vptq::SimdLevel> levels{vptq::SimdLevel::Scalar};
    for (vptq::SimdLevel l : simd_levels())
      if (vptq::simd_level_supported(l)) levels.push_back(l);
    for (vptq::SimdLevel level : levels)
      for (idx_t batch : {1, 2, 3, 5}) {
        const auto x = random_x(batch, N, 72 + static_cast<std::uint64_t>(batch));
        std::vector<double> ref, mag;
        dense_reference(W, x, batch, true, &ref, &mag);
        std::vector<float> ys(static_cast<std::size_t>(batch * M)), ys2(ys.size()), yd(ys.size()), y1(M);
        vptq::set_num_threads(1);
        sorted.forward(x.data(), batch, ys.data(), level);
        direct.forward(x.data(), batch, yd.data(), level);
        vptq::set_num_threads(2);
        sorted.forward(x.data(), batch, ys2.data(), level);
        ASSERT_EQ(0, std::memcmp(ys.data(), ys2.data(), ys.size() * sizeof(float))) << name;
        for (std::size_t i = 0; i < ys.size(); ++i)
          ASSERT_LE(std::fabs(ys[i] - yd[i]), simd_bound(2 * N + 512, mag[i]))
              << vptq::simd_level_name(level) << " " << name << " batch " << batch << " i " << i;
        for (idx_t r = 0; r < batch; ++r) {
          sorted.forward(x.data() + r * N, 1, y1.data(), level);
          ASSERT_EQ(0, std::memcmp(y1.data(), ys.data() + r * M, y1.size() * sizeof(float)))
              << vptq::simd_level_name(level) << " " << name << " row " << r;
        }
      }
    // BLAS path from the sorted layout (scattered dense tiles)
    sorted.set_blas_min_batch(4);
    const auto x = random_x(6, N, 79);
    std::vector<double> ref, mag;
    dense_reference(W, x, 6, true, &ref, &mag);
    std::vector<float> y(static_cast<std::size_t>(6 * M));
    for (vptq::SimdLevel level : levels) {
      sorted.forward(x.data(), 6, y.data(), level);
      for (std::size_t i = 0; i < y.size(); ++i)
        ASSERT_LE(std::fabs(y[i] - ref[i]), 4.0 * simd_bound(2 * N, mag[i])) << "BLAS " << name << " i " << i;
    }
  }
}

TEST(Gemv, histogram_form_matches_direct_kernel) {
  ThreadGuard guard;
  for (const Config& c : {Config{8, 256, 256, true, 1}, Config{5, 1024, 0, false, 2}, Config{8, 16, 16, false, 1}}) {
    RandomWeights W = make_weights(c, 83, 40, 61);
    vptq::GemvPlan plan(W.view(), W.lbias.data());
    for (vptq::SimdLevel level : simd_levels()) {
      if (!vptq::simd_level_supported(level)) continue;
      for (idx_t batch : {1, 8, 9, 16, 17, 33}) {
        const auto x = random_x(batch, 40, 62 + static_cast<std::uint64_t>(batch));
        std::vector<double> ref, mag;
        dense_reference(W, x, batch, true, &ref, &mag);
        std::vector<float> yd(static_cast<std::size_t>(batch * 83)), yh(yd.size()), yh2(yd.size());
        plan.set_hist_min_batch(0);  // direct kernel
        plan.forward(x.data(), batch, yd.data(), level);
        plan.set_hist_min_batch(1);  // histogram form for every batch
        vptq::set_num_threads(1);
        plan.forward(x.data(), batch, yh.data(), level);
        vptq::set_num_threads(2);
        plan.forward(x.data(), batch, yh2.data(), level);
        EXPECT_EQ(0, std::memcmp(yh.data(), yh2.data(), yh.size() * sizeof(float)));
        for (std::size_t i = 0; i < yd.size(); ++i)
          ASSERT_LE(std::fabs(yh[i] - yd[i]), simd_bound(2 * 40 + c.k1 + c.k2, mag[i]))
              << c.name() << " batch " << batch << " i " << i;
      }
    }
  }
}

TEST(Gemv, blas_path_matches_dense_reference) {
  ThreadGuard guard;
  RandomWeights W(300, 56, 12, 256, 16, 5.0, 4, 16, 2, 51);
  vptq::GemvOptions opt;
  opt.blas_min_batch = 4;
  vptq::GemvPlan plan(W.view(), W.lbias.data(), opt);
  for (idx_t batch : {3, 4, 9}) {  // 3: lookup kernel, 4 and 9: BLAS
    const auto x = random_x(batch, 56, 52);
    std::vector<double> ref, mag;
    dense_reference(W, x, batch, true, &ref, &mag);
    std::vector<float> y1(static_cast<std::size_t>(batch * 300)), y2(y1.size());
    vptq::set_num_threads(1);
    plan.forward(x.data(), batch, y1.data());
    vptq::set_num_threads(2);
    plan.forward(x.data(), batch, y2.data());
    EXPECT_EQ(0, std::memcmp(y1.data(), y2.data(), y1.size() * sizeof(float))) << batch;
    for (std::size_t i = 0; i < y1.size(); ++i) ASSERT_LE(std::fabs(y1[i] - ref[i]), 4.0 * simd_bound(2 * 56, mag[i]));
  }
}

TEST(Gemv, nan_in_x_propagates_to_its_row_only) {
  RandomWeights W(40, 24, 8, 16, 0, 0.0, 0, 0, 1, 31);
  vptq::GemvPlan plan(W.view());
  auto x = random_x(2, 24, 32);
  x[5] = std::nanf("");
  std::vector<float> y(2 * 40);
  plan.forward(x.data(), 2, y.data());
  for (int i = 0; i < 40; ++i) {
    EXPECT_TRUE(std::isnan(y[static_cast<std::size_t>(i)]));
    EXPECT_TRUE(std::isfinite(y[static_cast<std::size_t>(40 + i)]));
  }
}

TEST(Gemv, bad_input_throws) {
  RandomWeights W(40, 24, 8, 16, 16, 0.0, 0, 0, 1, 41);
  vptq::GemvPlan plan(W.view());
  std::vector<float> x(24), y(40);
  EXPECT_THROW(plan.forward(x.data(), 0, y.data()), std::invalid_argument);
  EXPECT_THROW(plan.forward(nullptr, 1, y.data()), std::invalid_argument);
  if (!vptq::simd_level_supported(vptq::SimdLevel::AVX512)) {
    EXPECT_THROW(plan.forward(x.data(), 1, y.data(), vptq::SimdLevel::AVX512), std::invalid_argument);
  }
  RandomWeights bad = W;
  bad.idx[3] = 16;  // out of range for k1 = 16
  EXPECT_THROW(vptq::GemvPlan p(bad.view()), std::invalid_argument);
  RandomWeights bad2 = W;
  bad2.ridx[7] = 999;
  EXPECT_THROW(vptq::GemvPlan p(bad2.view()), std::invalid_argument);
  RandomWeights bad3 = W;
  bad3.perm[0] = bad3.perm[1];  // not a permutation
  EXPECT_THROW(vptq::GemvPlan p(bad3.view()), std::invalid_argument);
  vptq::VQWeightsView v = W.view();
  v.res_indices = nullptr;  // missing residual indices
  EXPECT_THROW(vptq::GemvPlan p(v), std::invalid_argument);
}

TEST(Gemv, half_conversion_exact_round_trip) {
  for (std::uint32_t h = 0; h < 65536; ++h) {
    const std::uint16_t hh = static_cast<std::uint16_t>(h);
    if (((hh >> 10) & 0x1f) == 0x1f) continue;  // inf / nan: never stored
    const float f = vptq::detail::half_to_float(hh);
    bool exact = false;
    const std::uint16_t back = vptq::detail::float_to_half_exact_or(f, &exact);
    ASSERT_TRUE(exact) << h;
    ASSERT_EQ(back, hh) << h;
  }
  bool exact = true;
  vptq::detail::float_to_half_exact_or(1.0f + 0x1.0p-12f, &exact);
  EXPECT_FALSE(exact);
  vptq::detail::float_to_half_exact_or(70000.0f, &exact);
  EXPECT_FALSE(exact);
  vptq::detail::float_to_half_exact_or(0x1.0p-25f, &exact);
  EXPECT_FALSE(exact);
}

}  // namespace
