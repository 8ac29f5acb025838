// CodebookSearcher (every SIMD level available here, and the GEMM-tile path) against the
// brute-force reference nearest_centroid_ref.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "kernels/nearest_body-inl.h"
#include "vptq/nearest.h"
#include "vptq/simd.h"

namespace {

using vptq::idx_t;
using vptq::SimdLevel;

/// Restores the SIMD level in force when constructed.
struct LevelGuard {
  SimdLevel saved = vptq::get_simd_level();
  ~LevelGuard() { vptq::set_simd_level(saved); }
};

std::vector<float> small_ints(std::mt19937& g, idx_t count, int lo, int hi) {
  std::uniform_int_distribution<int> u(lo, hi);
  std::vector<float> v(static_cast<std::size_t>(count));
  for (auto& e : v) e = static_cast<float>(u(g));
  return v;
}

std::vector<float> gaussian(std::mt19937& g, idx_t count) {
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> v(static_cast<std::size_t>(count));
  for (auto& e : v) e = nd(g);
  return v;
}

enum class Path { Fused, Gemm, HintedRandom, HintedInPlace };

void run(const vptq::CodebookSearcher& s, Path p, const float* x, idx_t n, std::int32_t* idx, float* dist) {
  switch (p) {
    case Path::Fused:
      s.search(x, n, idx, dist);
      break;
    case Path::Gemm:
      s.search_gemm(x, n, idx, dist);
      break;
    case Path::HintedRandom: {
      // Arbitrary (valid) hints: the result must not depend on them.
      std::vector<std::int32_t> hint(static_cast<std::size_t>(n));
      for (idx_t i = 0; i < n; ++i) hint[static_cast<std::size_t>(i)] = static_cast<std::int32_t>((i * 7919) % s.k());
      s.search_hinted(x, n, hint.data(), idx, dist);
      break;
    }
    case Path::HintedInPlace: {
      // Good hints (a plain search), passed in the output array itself (k-means usage).
      s.search(x, n, idx, nullptr);
      for (idx_t i = 0; i < n; i += 3) idx[i] = static_cast<std::int32_t>((idx[i] + 1) % s.k());
      s.search_hinted(x, n, idx, idx, dist);
      break;
    }
  }
}

/// Exact data: identical indices (incl. tie-breaking) and distances.
void expect_exact_match(Path p, int d, idx_t k, idx_t n, std::uint32_t seed, int lo, int hi) {
  std::mt19937 g(seed);
  std::vector<float> c = small_ints(g, k * d, lo, hi);
  // Exact duplicates at higher indices: the lower one must win.
  for (idx_t j = 3; j < k; j += 5) std::copy_n(c.begin() + (j / 2) * d, d, c.begin() + j * d);
  std::vector<float> x = small_ints(g, n * d, lo - 1, hi + 1);
  std::vector<std::int32_t> idx(static_cast<std::size_t>(n), -1), ref_idx(static_cast<std::size_t>(n), -2);
  std::vector<float> dist(static_cast<std::size_t>(n), -1.0f), ref_dist(static_cast<std::size_t>(n), -2.0f);
  vptq::nearest_centroid_ref(x.data(), n, d, c.data(), k, ref_idx.data(), ref_dist.data());
  const vptq::CodebookSearcher s(c.data(), k, d);
  run(s, p, x.data(), n, idx.data(), dist.data());
  for (idx_t i = 0; i < n; ++i) {
    ASSERT_EQ(idx[static_cast<std::size_t>(i)], ref_idx[static_cast<std::size_t>(i)])
        << "d=" << d << " k=" << k << " n=" << n << " query " << i;
    ASSERT_EQ(dist[static_cast<std::size_t>(i)], ref_dist[static_cast<std::size_t>(i)]) << "query " << i;
  }
}

/// Random data: the chosen centroid is within 1e-5 relative of the true minimum distance.
void expect_near_optimal(Path p, int d, idx_t k, idx_t n, std::uint32_t seed) {
  std::mt19937 g(seed);
  std::vector<float> c = gaussian(g, k * d), x = gaussian(g, n * d);
  std::vector<std::int32_t> idx(static_cast<std::size_t>(n)), ref_idx(static_cast<std::size_t>(n));
  std::vector<float> dist(static_cast<std::size_t>(n)), ref_dist(static_cast<std::size_t>(n));
  vptq::nearest_centroid_ref(x.data(), n, d, c.data(), k, ref_idx.data(), ref_dist.data());
  const vptq::CodebookSearcher s(c.data(), k, d);
  run(s, p, x.data(), n, idx.data(), dist.data());
  for (idx_t i = 0; i < n; ++i) {
    const std::int32_t j = idx[static_cast<std::size_t>(i)];
    ASSERT_GE(j, 0);
    ASSERT_LT(j, k);
    // The returned distance is the exact distance to the returned centroid.
    float exact = 0.0f;
    for (int t = 0; t < d; ++t) {
      const float u = x[static_cast<std::size_t>(i * d + t)] - c[static_cast<std::size_t>(j * d + t)];
      exact += u * u;
    }
    ASSERT_EQ(dist[static_cast<std::size_t>(i)], exact);
    const float best = ref_dist[static_cast<std::size_t>(i)];
    ASSERT_LE(exact, best * (1.0f + 1e-5f) + 1e-6f) << "d=" << d << " k=" << k << " query " << i;
  }
}

class NearestLevel : public ::testing::TestWithParam<SimdLevel> {
 protected:
  void SetUp() override {
    if (!vptq::simd_level_supported(GetParam()))
      GTEST_SKIP() << "SIMD level " << vptq::simd_level_name(GetParam()) << " not supported on this CPU";
    vptq::set_simd_level(GetParam());
  }
  LevelGuard guard_;
};

TEST_P(NearestLevel, exact_data_matches_reference_for_every_d) {
  for (int d = 1; d <= 16; ++d)
    for (idx_t k : {idx_t{1}, idx_t{7}, idx_t{16}, idx_t{33}, idx_t{100}, idx_t{257}})
      for (idx_t n : {idx_t{0}, idx_t{1}, idx_t{17}}) expect_exact_match(Path::Fused, d, k, n, 11u * d + 7u * k + n, -4, 4);
}

TEST_P(NearestLevel, exact_data_with_many_ties_keeps_lowest_index) {
  // Values in {-1, 0, 1}: most queries have several centroids at the same distance.
  for (int d : {1, 2, 3, 6, 8, 12, 16})
    expect_exact_match(Path::Fused, d, 211, 37, 100u + d, -1, 1);
}

TEST_P(NearestLevel, large_codebook_spanning_several_tiles) {
  expect_exact_match(Path::Fused, 8, 4101, 9, 5u, -8, 8);
  expect_exact_match(Path::Fused, 1, 5000, 7, 6u, -100, 100);
  expect_exact_match(Path::Fused, 16, 1500, 5, 7u, -3, 3);
  expect_near_optimal(Path::Fused, 8, 4096 + 3, 13, 8u);
}

TEST_P(NearestLevel, random_data_is_near_optimal_for_every_d) {
  for (int d = 1; d <= 16; ++d)
    for (idx_t k : {idx_t{5}, idx_t{64}, idx_t{301}}) expect_near_optimal(Path::Fused, d, k, 31, 1000u + d * 3u + k);
}

TEST_P(NearestLevel, searcher_is_reusable_and_matches_one_shot) {
  std::mt19937 g(3);
  const int d = 6;
  const idx_t k = 77, n = 130;
  std::vector<float> c = small_ints(g, k * d, -5, 5), x = small_ints(g, n * d, -6, 6);
  const vptq::CodebookSearcher s(c.data(), k, d);
  std::vector<std::int32_t> all(static_cast<std::size_t>(n)), one(1);
  s.search(x.data(), n, all.data(), nullptr);
  for (idx_t i = 0; i < n; ++i) {
    s.search(x.data() + i * d, 1, one.data(), nullptr);
    ASSERT_EQ(one[0], all[static_cast<std::size_t>(i)]);
  }
}

TEST_P(NearestLevel, hinted_search_matches_reference_on_exact_data) {
  // k >= 2048 takes the norm-range path; smaller k falls back to the full scan.
  for (Path p : {Path::HintedRandom, Path::HintedInPlace}) {
    for (int d : {1, 2, 3, 6, 8, 12, 16}) {
      expect_exact_match(p, d, 2500, 37, 300u + d, -4, 4);
      expect_exact_match(p, d, 2049, 16, 400u + d, -1, 1);  // many ties
    }
    expect_exact_match(p, 8, 300, 9, 500u, -4, 4);
    expect_exact_match(p, 4, 4099, 1, 501u, -50, 50);
  }
}

TEST_P(NearestLevel, hinted_search_is_near_optimal_on_random_data) {
  for (Path p : {Path::HintedRandom, Path::HintedInPlace})
    for (int d : {2, 8, 16}) expect_near_optimal(p, d, 3000, 29, 600u + d);
  // Heavy-tailed norms (where the range pruning does most): scaled rows.
  std::mt19937 g(77);
  const int d = 8;
  const idx_t k = 4096, n = 200;
  std::vector<float> c = gaussian(g, k * d), x = gaussian(g, n * d);
  std::lognormal_distribution<float> ln(0.0f, 1.0f);
  for (idx_t j = 0; j < k; ++j) {
    const float sc = ln(g);
    for (int t = 0; t < d; ++t) c[static_cast<std::size_t>(j * d + t)] *= sc;
  }
  for (idx_t i = 0; i < n; ++i) {
    const float sc = ln(g);
    for (int t = 0; t < d; ++t) x[static_cast<std::size_t>(i * d + t)] *= sc;
  }
  std::vector<std::int32_t> idx(static_cast<std::size_t>(n)), ref(static_cast<std::size_t>(n));
  std::vector<float> dist(static_cast<std::size_t>(n)), ref_dist(static_cast<std::size_t>(n));
  vptq::nearest_centroid_ref(x.data(), n, d, c.data(), k, ref.data(), ref_dist.data());
  const vptq::CodebookSearcher s(c.data(), k, d);
  for (idx_t i = 0; i < n; ++i) idx[static_cast<std::size_t>(i)] = static_cast<std::int32_t>((i * 31) % k);
  s.search_hinted(x.data(), n, idx.data(), idx.data(), dist.data());
  for (idx_t i = 0; i < n; ++i) {
    const float best = ref_dist[static_cast<std::size_t>(i)];
    ASSERT_LE(dist[static_cast<std::size_t>(i)], best * (1.0f + 1e-5f) + 1e-6f) << "query " << i;
  }
}

INSTANTIATE_TEST_SUITE_P(Levels, NearestLevel,
                         ::testing::Values(SimdLevel::Scalar, SimdLevel::AVX2, SimdLevel::AVX512),
                         [](const ::testing::TestParamInfo<SimdLevel>& info) {
                           return std::string(vptq::simd_level_name(info.param));
                         });

TEST(NearestGemm, exact_data_matches_reference) {
  for (int d : {1, 2, 5, 8, 12, 16})
    for (idx_t k : {idx_t{1}, idx_t{9}, idx_t{1030}})
      for (idx_t n : {idx_t{0}, idx_t{1}, idx_t{259}}) expect_exact_match(Path::Gemm, d, k, n, 50u + d + k + n, -4, 4);
}

TEST(NearestGemm, random_data_is_near_optimal) {
  for (int d : {3, 8, 16}) expect_near_optimal(Path::Gemm, d, 1500, 40, 9u + d);
}

TEST(NearestSearcher, rejects_bad_arguments) {
  std::vector<float> c(64, 1.0f);
  EXPECT_THROW(vptq::CodebookSearcher(c.data(), 4, 0), std::invalid_argument);
  EXPECT_THROW(vptq::CodebookSearcher(c.data(), 2, 17), std::invalid_argument);
  EXPECT_THROW(vptq::CodebookSearcher(c.data(), 0, 4), std::invalid_argument);
  EXPECT_THROW(vptq::CodebookSearcher(nullptr, 4, 4), std::invalid_argument);
  c[5] = std::nanf("");
  EXPECT_THROW(vptq::CodebookSearcher(c.data(), 4, 4), std::invalid_argument);
  c[5] = 1.0f;
  const vptq::CodebookSearcher s(c.data(), 4, 4);
  std::int32_t idx = 0;
  EXPECT_THROW(s.search(nullptr, 1, &idx, nullptr), std::invalid_argument);
  EXPECT_THROW(s.search(c.data(), -1, &idx, nullptr), std::invalid_argument);
  EXPECT_NO_THROW(s.search(nullptr, 0, nullptr, nullptr));
  std::int32_t bad_hint = 4;
  EXPECT_THROW(s.search_hinted(c.data(), 1, &bad_hint, &idx, nullptr), std::invalid_argument);
  bad_hint = -1;
  EXPECT_THROW(s.search_hinted(c.data(), 1, &bad_hint, &idx, nullptr), std::invalid_argument);
  EXPECT_THROW(s.search_hinted(c.data(), 1, nullptr, &idx, nullptr), std::invalid_argument);
  EXPECT_EQ(s.k(), 4);
  EXPECT_EQ(s.d(), 4);
}

TEST(NearestSearcher, reference_picks_lowest_index_on_ties) {
  // Query 0 is equidistant from centroids 1 and 2 (and 0 is farther).
  const float c[] = {10.0f, -1.0f, 1.0f};
  const float x[] = {0.0f, 1.0f};
  std::int32_t idx[2];
  float dist[2];
  vptq::nearest_centroid_ref(x, 2, 1, c, 3, idx, dist);
  EXPECT_EQ(idx[0], 1);
  EXPECT_EQ(dist[0], 1.0f);
  EXPECT_EQ(idx[1], 2);
  EXPECT_EQ(dist[1], 0.0f);
}

// ---------------------------------------------------------------------------------------
// The shared kernel body with a portable 16-lane emulation of the AVX-512 traits: runs the
// W = 16 code paths (64-centroid chunks, 64-bit tie masks, 64-aligned ranges) on any CPU,
// so they are tested even where AVX-512 itself is absent.

struct Emu16 {
  struct reg {
    float v[16];
  };
  static constexpr int W = 16;
  static constexpr bool kPinLoads = false;
  static reg load(const float* p) {
    reg r;
    std::memcpy(r.v, p, sizeof r.v);
    return r;
  }
  static reg set1(float x) {
    reg r;
    for (float& e : r.v) e = x;
    return r;
  }
  static reg bcast(const float* p) { return set1(*p); }
  static reg fmadd(reg a, reg b, reg c) {
    for (int l = 0; l < W; ++l) c.v[l] = std::fma(a.v[l], b.v[l], c.v[l]);
    return c;
  }
  static float fma1(float a, float b, float c) { return std::fma(a, b, c); }
  static reg min(reg a, reg b) {  // _mm512_min_ps semantics: b unless a < b
    for (int l = 0; l < W; ++l) a.v[l] = a.v[l] < b.v[l] ? a.v[l] : b.v[l];
    return a;
  }
  static bool any_lt(reg a, reg b) {
    for (int l = 0; l < W; ++l)
      if (a.v[l] < b.v[l]) return true;
    return false;
  }
  static bool any_le(reg a, reg b) {
    for (int l = 0; l < W; ++l)
      if (a.v[l] <= b.v[l]) return true;
    return false;
  }
  static float hmin(reg a) {
    float m = a.v[0];
    for (int l = 1; l < W; ++l) m = a.v[l] < m ? a.v[l] : m;
    return m;
  }
  static std::uint32_t eq_mask(reg a, reg b) {
    std::uint32_t m = 0;
    for (int l = 0; l < W; ++l) m |= static_cast<std::uint32_t>(a.v[l] == b.v[l]) << l;
    return m;
  }
};

/// The padded SoA layout of CodebookSearcher, built independently (original or norm order).
struct Layout {
  std::vector<float> soa, norms, norm2, gmin, gmax;
  std::vector<std::int32_t> perm;
  vptq::kernels::NearestCodebook cb;
  vptq::kernels::NearestHintData hd;
  Layout(const std::vector<float>& c, idx_t k, int d, bool sorted) {
    constexpr int B = vptq::kernels::kNearestBlock, G = vptq::kernels::kNearestRangeGroup;
    const idx_t kpad = (k + vptq::kernels::kNearestPad - 1) / vptq::kernels::kNearestPad * vptq::kernels::kNearestPad;
    const int dl = vptq::kernels::nearest_layout_dim(d);
    const float inf = std::numeric_limits<float>::infinity();
    std::vector<double> cn(static_cast<std::size_t>(k));
    norm2.resize(static_cast<std::size_t>(k));
    for (idx_t i = 0; i < k; ++i) {
      float s = 0.0f;
      double sd = 0.0;
      for (int j = 0; j < d; ++j) {
        const float v = c[static_cast<std::size_t>(i * d + j)];
        s += v * v;
        sd += static_cast<double>(v) * v;
      }
      norm2[static_cast<std::size_t>(i)] = s;
      cn[static_cast<std::size_t>(i)] = std::sqrt(sd);
    }
    perm.assign(static_cast<std::size_t>(kpad), static_cast<std::int32_t>(k));
    std::iota(perm.begin(), perm.begin() + k, 0);
    if (sorted)
      std::stable_sort(perm.begin(), perm.begin() + k, [&](std::int32_t a, std::int32_t b) {
        return cn[static_cast<std::size_t>(a)] < cn[static_cast<std::size_t>(b)];
      });
    soa.assign(static_cast<std::size_t>(kpad * dl), 0.0f);
    norms.assign(static_cast<std::size_t>(kpad), inf);
    gmin.assign(static_cast<std::size_t>(kpad / G), inf);
    gmax.assign(static_cast<std::size_t>(kpad / G), inf);
    for (idx_t p = 0; p < k; ++p) {
      const idx_t i = perm[static_cast<std::size_t>(p)];
      for (int j = 0; j < d; ++j)
        soa[static_cast<std::size_t>((p / B * dl + j) * B + p % B)] = c[static_cast<std::size_t>(i * d + j)];
      norms[static_cast<std::size_t>(p)] = norm2[static_cast<std::size_t>(i)];
      const float v = static_cast<float>(cn[static_cast<std::size_t>(i)]);
      if (p % G == 0) gmin[static_cast<std::size_t>(p / G)] = std::nextafter(v, -inf);
      gmax[static_cast<std::size_t>(p / G)] = std::nextafter(v, inf);
    }
    cb.cb = soa.data();
    cb.norms = norms.data();
    cb.k = k;
    cb.kpad = kpad;
    cb.d = dl;
    cb.dq = d;
    cb.perm = sorted ? perm.data() : nullptr;
    hd.c = c.data();
    hd.norm2 = norm2.data();
    hd.group_min = gmin.data();
    hd.group_max = gmax.data();
    hd.ngroups = static_cast<idx_t>(gmin.size());
  }
};

TEST(NearestBody, emulated_16_lanes_match_reference_on_exact_data) {
  for (int d : {1, 3, 8, 11, 16}) {
    for (idx_t k : {idx_t{1}, idx_t{70}, idx_t{700}}) {
      std::mt19937 g(900u + d + k);
      std::vector<float> c = small_ints(g, k * d, -4, 4);
      for (idx_t j = 3; j < k; j += 5) std::copy_n(c.begin() + (j / 2) * d, d, c.begin() + j * d);
      const idx_t n = 37;
      std::vector<float> x = small_ints(g, n * d, -5, 5);
      std::vector<std::int32_t> ref(static_cast<std::size_t>(n)), got(static_cast<std::size_t>(n));
      vptq::nearest_centroid_ref(x.data(), n, d, c.data(), k, ref.data(), nullptr);
      const Layout plain(c, k, d, false);
      vptq::kernels::nearest_body::search<Emu16, 2>(plain.cb, x.data(), n, got.data());
      ASSERT_EQ(got, ref) << "plain d=" << d << " k=" << k;
      const Layout sorted(c, k, d, true);
      std::vector<std::int32_t> hint(static_cast<std::size_t>(n));
      for (idx_t i = 0; i < n; ++i) hint[static_cast<std::size_t>(i)] = static_cast<std::int32_t>((i * 13) % k);
      vptq::kernels::nearest_body::search_hinted<Emu16, 2>(sorted.cb, sorted.hd, x.data(), n, hint.data(),
                                                           got.data());
      ASSERT_EQ(got, ref) << "hinted d=" << d << " k=" << k;
    }
  }
}

}  // namespace
