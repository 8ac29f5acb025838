// weighted_kmeans: invariants, determinism across thread counts, empty-cluster handling.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "vptq/common.h"
#include "vptq/kmeans.h"
#include "vptq/nearest.h"

namespace {

using vptq::idx_t;

struct Result {
  std::vector<float> c;
  std::vector<std::int32_t> a;
  vptq::KMeansStats st;
};

Result run(const std::vector<float>& x, int d, const float* w, idx_t k, const vptq::KMeansParams& p) {
  const idx_t n = static_cast<idx_t>(x.size()) / d;
  Result r;
  r.c.assign(static_cast<std::size_t>(k * d), 0.0f);
  r.a.assign(static_cast<std::size_t>(n), -1);
  r.st = vptq::weighted_kmeans(x.data(), n, d, w, k, p, r.c.data(), r.a.data());
  return r;
}

/// Heavy-tailed, correlated rows cut into d-vectors (like weight matrices).
std::vector<float> realistic(idx_t n, int d, std::uint32_t seed) {
  std::mt19937 g(seed);
  std::student_t_distribution<float> t(4.0f);
  std::vector<float> x(static_cast<std::size_t>(n * d));
  for (idx_t i = 0; i < n; ++i) {
    const float row_scale = 0.5f + static_cast<float>(i % 7) * 0.25f;
    float prev = 0.0f;
    for (int j = 0; j < d; ++j) {
      prev = 0.6f * prev + t(g);
      x[static_cast<std::size_t>(i * d + j)] = row_scale * prev;
    }
  }
  return x;
}

bool bit_equal(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

/// Restores the thread count in force when constructed.
struct ThreadGuard {
  int saved = vptq::get_num_threads();
  ~ThreadGuard() { vptq::set_num_threads(saved); }
};

TEST(KMeans, unit_weights_equal_unweighted) {
  const int d = 8;
  const std::vector<float> x = realistic(3000, d, 1);
  const std::vector<float> ones(3000, 1.0f);
  vptq::KMeansParams p;
  p.max_iter = 8;
  const Result a = run(x, d, nullptr, 64, p);
  const Result b = run(x, d, ones.data(), 64, p);
  EXPECT_TRUE(bit_equal(a.c, b.c));
  EXPECT_EQ(a.a, b.a);
  EXPECT_EQ(a.st.inertia, b.st.inertia);
}

TEST(KMeans, objective_is_non_increasing_and_history_consistent) {
  const int d = 6;
  const idx_t n = 4000, k = 100;
  const std::vector<float> x = realistic(n, d, 2);
  std::mt19937 g(5);
  std::uniform_real_distribution<float> u(0.0f, 3.0f);
  std::vector<float> w(static_cast<std::size_t>(n));
  for (auto& e : w) e = u(g);
  w[3] = 0.0f;
  vptq::KMeansParams p;
  p.max_iter = 15;
  p.tol = 0.0;
  const Result r = run(x, d, w.data(), k, p);
  ASSERT_EQ(r.st.inertia.size(), static_cast<std::size_t>(r.st.iterations) + 1);
  ASSERT_GE(r.st.iterations, 1);
  for (std::size_t t = 1; t < r.st.inertia.size(); ++t)
    EXPECT_LE(r.st.inertia[t], r.st.inertia[t - 1] * (1.0 + 1e-6)) << "iteration " << t;
  EXPECT_LT(r.st.inertia.back(), r.st.inertia.front());
  // The last inertia and the assignment belong to the returned centroids.
  std::vector<std::int32_t> idx(static_cast<std::size_t>(n));
  std::vector<float> dist(static_cast<std::size_t>(n));
  vptq::nearest_centroid_ref(x.data(), n, d, r.c.data(), k, idx.data(), dist.data());
  double inertia = 0.0;
  for (idx_t i = 0; i < n; ++i) {
    const std::int32_t j = r.a[static_cast<std::size_t>(i)];
    ASSERT_GE(j, 0);
    ASSERT_LT(j, k);
    float dj = 0.0f;
    for (int t = 0; t < d; ++t) {
      const float e = x[static_cast<std::size_t>(i * d + t)] - r.c[static_cast<std::size_t>(j * d + t)];
      dj += e * e;
    }
    ASSERT_LE(dj, dist[static_cast<std::size_t>(i)] * (1.0f + 1e-5f) + 1e-6f);
    inertia += static_cast<double>(w[static_cast<std::size_t>(i)]) * dj;
  }
  EXPECT_NEAR(inertia, r.st.inertia.back(), 1e-9 * inertia);
}

TEST(KMeans, bit_identical_for_any_thread_count) {
  const ThreadGuard guard;
  const int d = 8;
  const idx_t n = 5000;
  const std::vector<float> x = realistic(n, d, 3);
  std::vector<float> w(static_cast<std::size_t>(n));
  for (idx_t i = 0; i < n; ++i) w[static_cast<std::size_t>(i)] = 0.1f + static_cast<float>(i % 13);
  for (bool pp : {false, true}) {
    vptq::KMeansParams p;
    p.max_iter = 6;
    p.kmeanspp = pp;
    p.kmeanspp_sample = 3000;
    p.seed = 42;
    vptq::set_num_threads(1);
    const Result a = run(x, d, w.data(), 96, p);
    vptq::set_num_threads(2);
    const Result b = run(x, d, w.data(), 96, p);
    vptq::set_num_threads(3);
    const Result c = run(x, d, w.data(), 96, p);
    EXPECT_TRUE(bit_equal(a.c, b.c)) << "kmeans++=" << pp;
    EXPECT_TRUE(bit_equal(a.c, c.c)) << "kmeans++=" << pp;
    EXPECT_EQ(a.a, b.a);
    EXPECT_EQ(a.st.inertia, b.st.inertia);
    EXPECT_EQ(a.st.inertia, c.st.inertia);
  }
}

TEST(KMeans, same_seed_same_result_other_seed_differs) {
  const int d = 4;
  const std::vector<float> x = realistic(1000, d, 4);
  vptq::KMeansParams p;
  p.max_iter = 3;
  p.seed = 7;
  const Result a = run(x, d, nullptr, 20, p);
  const Result b = run(x, d, nullptr, 20, p);
  p.seed = 8;
  const Result c = run(x, d, nullptr, 20, p);
  EXPECT_TRUE(bit_equal(a.c, b.c));
  EXPECT_FALSE(bit_equal(a.c, c.c));
}

TEST(KMeans, weighted_mean_on_tiny_case) {
  // Two well separated groups in 2-D; k = 2 converges to the weighted means.
  const std::vector<float> x = {0.0f, 0.0f, 4.0f, 0.0f, 8.0f, 4.0f, 100.0f, 100.0f, 102.0f, 100.0f};
  const std::vector<float> w = {1.0f, 1.0f, 2.0f, 3.0f, 1.0f};
  vptq::KMeansParams p;
  p.max_iter = 10;
  p.kmeanspp = true;  // one centre per group
  const Result r = run(x, 2, w.data(), 2, p);
  const int lo = r.c[0] < r.c[2] ? 0 : 1;
  EXPECT_FLOAT_EQ(r.c[static_cast<std::size_t>(2 * lo)], 5.0f);      // (0 + 4 + 16) / 4
  EXPECT_FLOAT_EQ(r.c[static_cast<std::size_t>(2 * lo + 1)], 2.0f);  // (0 + 0 + 8) / 4
  EXPECT_FLOAT_EQ(r.c[static_cast<std::size_t>(2 * (1 - lo))], 100.5f);
  EXPECT_FLOAT_EQ(r.c[static_cast<std::size_t>(2 * (1 - lo) + 1)], 100.0f);
  EXPECT_EQ(r.a, (std::vector<std::int32_t>{lo, lo, lo, 1 - lo, 1 - lo}));
  // k = 1 with zero weights: the mean ignores the zero-weight point.
  const std::vector<float> w0 = {1.0f, 1.0f, 2.0f, 0.0f, 0.0f};
  const Result one = run(x, 2, w0.data(), 1, p);
  EXPECT_FLOAT_EQ(one.c[0], 5.0f);
  EXPECT_FLOAT_EQ(one.c[1], 2.0f);
}

TEST(KMeans, empty_clusters_are_reseeded_from_duplicates) {
  // 98 points at 0 and one each at 10 and 20: random init very likely picks duplicate
  // zeros; the empty duplicate must be re-seeded so that all 3 values are found.
  std::vector<float> x(100, 0.0f);
  x[40] = 10.0f;
  x[77] = 20.0f;
  for (std::uint64_t seed = 0; seed < 5; ++seed) {
    vptq::KMeansParams p;
    p.seed = seed;
    p.max_iter = 20;
    const Result r = run(x, 1, nullptr, 3, p);
    std::vector<float> c = r.c;
    std::sort(c.begin(), c.end());
    EXPECT_EQ(c, (std::vector<float>{0.0f, 10.0f, 20.0f})) << "seed " << seed;
    EXPECT_EQ(r.st.inertia.back(), 0.0);
  }
  // Fewer distinct points than clusters: no crash, inertia 0, duplicates stay valid.
  std::vector<float> y(40);
  for (int i = 0; i < 40; ++i) y[static_cast<std::size_t>(i)] = static_cast<float>(i % 3);
  vptq::KMeansParams p;
  p.max_iter = 5;
  const Result r = run(y, 1, nullptr, 6, p);
  EXPECT_EQ(r.st.inertia.back(), 0.0);
  for (float v : r.c) EXPECT_TRUE(v == 0.0f || v == 1.0f || v == 2.0f);
}

TEST(KMeans, zero_weight_cluster_is_reseeded) {
  // The points at 50 have zero weight: their cluster has no mass and must be re-seeded.
  const std::vector<float> x = {0.0f, 1.0f, 2.0f, 50.0f, 50.0f, 9.0f, 10.0f};
  const std::vector<float> w = {1.0f, 1.0f, 1.0f, 0.0f, 0.0f, 1.0f, 1.0f};
  vptq::KMeansParams p;
  p.max_iter = 10;
  const Result r = run(x, 1, w.data(), 3, p);
  for (float v : r.c) EXPECT_TRUE(std::isfinite(v));
  EXPECT_LE(r.st.inertia.back(), r.st.inertia.front());
}

TEST(KMeans, recovers_well_separated_clusters) {
  const int d = 8, true_k = 8;
  const idx_t per = 100;
  std::mt19937 g(9);
  std::normal_distribution<float> nd(0.0f, 0.1f);
  std::vector<float> x;
  for (int c = 0; c < true_k; ++c)
    for (idx_t i = 0; i < per; ++i)
      for (int j = 0; j < d; ++j) x.push_back(static_cast<float>(10 * ((c >> (j % 3)) & 1) + 5 * c * (j == 7)) + nd(g));
  for (bool pp : {true, false}) {
    vptq::KMeansParams p;
    p.kmeanspp = pp;
    p.seed = 1;
    const Result r = run(x, d, nullptr, true_k, p);
    // Every true cluster maps to a single centroid, and the centroids are all used.
    std::vector<int> seen(true_k, 0);
    for (int c = 0; c < true_k; ++c) {
      const std::int32_t first = r.a[static_cast<std::size_t>(c * per)];
      for (idx_t i = 0; i < per; ++i) ASSERT_EQ(r.a[static_cast<std::size_t>(c * per + i)], first);
      seen[static_cast<std::size_t>(first)]++;
    }
    for (int s : seen) EXPECT_EQ(s, 1) << "kmeans++=" << pp;
  }
}

TEST(KMeans, rejects_bad_arguments) {
  std::vector<float> x(40, 1.0f), c(40);
  std::vector<float> w(10, 1.0f);
  const vptq::KMeansParams p;
  auto call = [&](idx_t n, int d, const float* wp, idx_t k) {
    return vptq::weighted_kmeans(x.data(), n, d, wp, k, p, c.data(), nullptr);
  };
  EXPECT_THROW(call(10, 4, nullptr, 11), std::invalid_argument);
  EXPECT_THROW(call(10, 4, nullptr, 0), std::invalid_argument);
  EXPECT_THROW(call(10, 0, nullptr, 1), std::invalid_argument);
  EXPECT_THROW(call(2, 17, nullptr, 1), std::invalid_argument);
  EXPECT_THROW(call(0, 4, nullptr, 1), std::invalid_argument);
  w[2] = -1.0f;
  EXPECT_THROW(call(10, 4, w.data(), 2), std::invalid_argument);
  w[2] = std::nanf("");
  EXPECT_THROW(call(10, 4, w.data(), 2), std::invalid_argument);
  w[2] = 1.0f;
  x[7] = std::numeric_limits<float>::infinity();
  EXPECT_THROW(call(10, 4, w.data(), 2), std::invalid_argument);
  x[7] = 1.0f;
  vptq::KMeansParams bad;
  bad.tol = -1.0;
  EXPECT_THROW(vptq::weighted_kmeans(x.data(), 10, 4, nullptr, 2, bad, c.data(), nullptr), std::invalid_argument);
  EXPECT_NO_THROW(call(10, 4, w.data(), 10));
}

}  // namespace
