// Weighted k-means (Lloyd). Assignment in fixed blocks of queries with the
// CodebookSearcher, centroid update by gathering each cluster's points in index
// order (a counting sort of the assignment), so every floating-point sum has an order
// that does not depend on the thread count: results are bit-identical for any
// set_num_threads(). Memory: O(n) indices/distances + O(k*d) + per-block scratch.
#include "vptq/kmeans.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <queue>
#include <unordered_set>
#include <utility>

#include "vptq/nearest.h"

namespace vptq {

namespace {

constexpr idx_t kAssignBlock = 256;  // queries per parallel assignment block
constexpr idx_t kUpdateBlock = 64;   // clusters per parallel update block

/// k distinct indices of [0, n) in a deterministic order (Floyd's algorithm).
std::vector<idx_t> sample_distinct(Rng& rng, idx_t n, idx_t k) {
  std::vector<idx_t> out;
  out.reserve(static_cast<std::size_t>(k));
  if (k == n) {
    // All of them, in a random order (Fisher-Yates).
    for (idx_t i = 0; i < n; ++i) out.push_back(i);
    for (idx_t i = n - 1; i > 0; --i) {
      const idx_t j = static_cast<idx_t>(rng.below(static_cast<std::uint64_t>(i + 1)));
      std::swap(out[static_cast<std::size_t>(i)], out[static_cast<std::size_t>(j)]);
    }
    return out;
  }
  std::unordered_set<idx_t> seen;
  seen.reserve(static_cast<std::size_t>(k) * 2);
  for (idx_t j = n - k; j < n; ++j) {
    const idx_t t = static_cast<idx_t>(rng.below(static_cast<std::uint64_t>(j + 1)));
    const idx_t pick = seen.count(t) ? j : t;
    seen.insert(pick);
    out.push_back(pick);
  }
  return out;
}

inline float sq_dist(const float* a, const float* b, int d) {
  float s = 0.0f;
  for (int j = 0; j < d; ++j) {
    const float t = a[j] - b[j];
    s += t * t;
  }
  return s;
}

/// k-means++ (weighted by w * D²) on a uniform sample of at most max(sample, k) points.
void init_kmeanspp(const float* x, idx_t n, int d, const float* w, idx_t k, const KMeansParams& p, Rng& rng,
                   float* c /*[k, d] out*/) {
  const idx_t m = std::min(n, std::max(p.kmeanspp_sample, k));
  std::vector<idx_t> sample = sample_distinct(rng, n, m);
  std::sort(sample.begin(), sample.end());
  std::vector<float> xs(static_cast<std::size_t>(m * d));   // [m, d]
  std::vector<double> ws(static_cast<std::size_t>(m));      // [m]
  for (idx_t i = 0; i < m; ++i) {
    const idx_t s = sample[static_cast<std::size_t>(i)];
    std::copy(x + s * d, x + (s + 1) * d, xs.begin() + i * d);
    ws[static_cast<std::size_t>(i)] = w ? static_cast<double>(w[s]) : 1.0;
  }
  std::vector<float> dmin(static_cast<std::size_t>(m), std::numeric_limits<float>::infinity());
  std::vector<char> chosen(static_cast<std::size_t>(m), 0);
  constexpr idx_t PB = 4096;
  const idx_t nb = (m + PB - 1) / PB;
  std::vector<double> part(static_cast<std::size_t>(nb));

  auto draw = [&](bool use_dist) -> idx_t {
    // Probability proportional to w (first centre) or w * D² (next ones).
    parallel_for(nb, [&](idx_t b) {
      double s = 0.0;
      for (idx_t i = b * PB; i < std::min(m, (b + 1) * PB); ++i)
        s += ws[static_cast<std::size_t>(i)] * (use_dist ? static_cast<double>(dmin[static_cast<std::size_t>(i)]) : 1.0);
      part[static_cast<std::size_t>(b)] = s;
    });
    double total = 0.0;
    for (double v : part) total += v;
    if (!(total > 0.0)) {
      // All remaining mass is zero: uniform among the not yet chosen points.
      for (;;) {
        const idx_t i = static_cast<idx_t>(rng.below(static_cast<std::uint64_t>(m)));
        if (!chosen[static_cast<std::size_t>(i)]) return i;
      }
    }
    double r = rng.uniform() * total;
    idx_t b = 0;
    while (b + 1 < nb && r >= part[static_cast<std::size_t>(b)]) r -= part[static_cast<std::size_t>(b++)];
    idx_t last = -1;
    for (idx_t i = b * PB; i < std::min(m, (b + 1) * PB); ++i) {
      const double wi = ws[static_cast<std::size_t>(i)] * (use_dist ? static_cast<double>(dmin[static_cast<std::size_t>(i)]) : 1.0);
      if (wi <= 0.0) continue;
      last = i;
      if (r < wi) return i;
      r -= wi;
    }
    return last;  // rounding: the last point with positive mass in the block
  };

  for (idx_t ci = 0; ci < k; ++ci) {
    idx_t pick = draw(ci > 0);
    if (pick < 0 || chosen[static_cast<std::size_t>(pick)]) {
      for (;;) {
        pick = static_cast<idx_t>(rng.below(static_cast<std::uint64_t>(m)));
        if (!chosen[static_cast<std::size_t>(pick)]) break;
      }
    }
    chosen[static_cast<std::size_t>(pick)] = 1;
    const float* cc = xs.data() + pick * d;
    std::copy(cc, cc + d, c + ci * d);
    if (ci + 1 == k) break;
    parallel_for(nb, [&](idx_t b) {
      for (idx_t i = b * PB; i < std::min(m, (b + 1) * PB); ++i) {
        const float dd = sq_dist(xs.data() + i * d, cc, d);
        float& dm = dmin[static_cast<std::size_t>(i)];
        if (dd < dm) dm = dd;
      }
    });
  }
}

struct Lloyd {
  const float* x;
  idx_t n;
  int d;
  const float* w;
  idx_t k;
  std::vector<float> c;          // [k, d]
  std::vector<std::int32_t> a;   // [n]
  std::vector<float> dist;       // [n]
  std::vector<double> part;      // [n / kAssignBlock]
  std::vector<idx_t> start;      // [k + 1] counting-sort offsets
  std::vector<idx_t> order;      // [n] point ids grouped by cluster, ascending inside
  std::vector<double> err;       // [k] weighted error per cluster
  std::vector<char> empty;       // [k]

  double wt(idx_t i) const { return w ? static_cast<double>(w[i]) : 1.0; }

  /// hinted: the current assignment is a valid starting guess (all but the first pass).
  double assign(bool hinted) {
    const CodebookSearcher s(c.data(), k, d);
    const idx_t nb = (n + kAssignBlock - 1) / kAssignBlock;
    part.assign(static_cast<std::size_t>(nb), 0.0);
    // Dynamic schedule: blocks cost different amounts (hinted ranges) and the machine may be
    // shared; each block writes its own slots, so the result does not depend on the schedule.
    parallel_for_dynamic(nb, [&](idx_t b) {
      const idx_t i0 = b * kAssignBlock, cnt = std::min(kAssignBlock, n - i0);
      if (hinted)
        s.search_hinted(x + i0 * d, cnt, a.data() + i0, a.data() + i0, dist.data() + i0);
      else
        s.search(x + i0 * d, cnt, a.data() + i0, dist.data() + i0);
      double acc = 0.0;
      for (idx_t i = i0; i < i0 + cnt; ++i) acc += wt(i) * static_cast<double>(dist[static_cast<std::size_t>(i)]);
      part[static_cast<std::size_t>(b)] = acc;
    });
    double total = 0.0;
    for (double v : part) total += v;
    return total;
  }

  /// Weighted means of the current assignment; returns the number of re-seeded clusters.
  idx_t update() {
    start.assign(static_cast<std::size_t>(k + 1), 0);
    for (idx_t i = 0; i < n; ++i) ++start[static_cast<std::size_t>(a[static_cast<std::size_t>(i)]) + 1];
    for (idx_t j = 0; j < k; ++j) start[static_cast<std::size_t>(j + 1)] += start[static_cast<std::size_t>(j)];
    order.resize(static_cast<std::size_t>(n));
    {
      std::vector<idx_t> pos(start.begin(), start.end() - 1);
      for (idx_t i = 0; i < n; ++i) order[static_cast<std::size_t>(pos[static_cast<std::size_t>(a[static_cast<std::size_t>(i)])]++)] = i;
    }
    err.assign(static_cast<std::size_t>(k), 0.0);
    empty.assign(static_cast<std::size_t>(k), 0);
    const idx_t nb = (k + kUpdateBlock - 1) / kUpdateBlock;
    parallel_for_dynamic(nb, [&](idx_t b) {
      double sx[16];
      for (idx_t j = b * kUpdateBlock; j < std::min(k, (b + 1) * kUpdateBlock); ++j) {
        double sw = 0.0, se = 0.0;
        for (int t = 0; t < d; ++t) sx[t] = 0.0;
        for (idx_t p = start[static_cast<std::size_t>(j)]; p < start[static_cast<std::size_t>(j + 1)]; ++p) {
          const idx_t i = order[static_cast<std::size_t>(p)];
          const double wi = wt(i);
          sw += wi;
          se += wi * static_cast<double>(dist[static_cast<std::size_t>(i)]);
          const float* xi = x + i * d;
          for (int t = 0; t < d; ++t) sx[t] += wi * static_cast<double>(xi[t]);
        }
        err[static_cast<std::size_t>(j)] = se;
        if (sw > 0.0) {
          for (int t = 0; t < d; ++t) c[static_cast<std::size_t>(j * d + t)] = static_cast<float>(sx[t] / sw);
        } else {
          empty[static_cast<std::size_t>(j)] = 1;
        }
      }
    });
    return reseed();
  }

  /// Each empty (or zero-weight) cluster takes the farthest positive-weight point of the
  /// cluster with the largest weighted error; deterministic (index order, ties by index).
  idx_t reseed() {
    std::vector<idx_t> empties;
    for (idx_t j = 0; j < k; ++j)
      if (empty[static_cast<std::size_t>(j)]) empties.push_back(j);
    if (empties.empty()) return 0;
    using Entry = std::pair<double, idx_t>;  // (error, -cluster): max error, then lowest id
    std::priority_queue<Entry> heap;
    for (idx_t j = 0; j < k; ++j)
      if (!empty[static_cast<std::size_t>(j)] && err[static_cast<std::size_t>(j)] > 0.0)
        heap.emplace(err[static_cast<std::size_t>(j)], -j);
    // Per donor cluster: candidate points sorted by distance desc (ids asc), consumed in order.
    std::vector<std::vector<idx_t>> cand(static_cast<std::size_t>(k));
    std::vector<std::size_t> used(static_cast<std::size_t>(k), 0);
    std::vector<char> prepared(static_cast<std::size_t>(k), 0);
    idx_t done = 0;
    for (idx_t e : empties) {
      while (!heap.empty()) {
        const idx_t j = -heap.top().second;
        heap.pop();
        auto& cj = cand[static_cast<std::size_t>(j)];
        if (!prepared[static_cast<std::size_t>(j)]) {
          prepared[static_cast<std::size_t>(j)] = 1;
          for (idx_t p = start[static_cast<std::size_t>(j)]; p < start[static_cast<std::size_t>(j + 1)]; ++p) {
            const idx_t i = order[static_cast<std::size_t>(p)];
            if (wt(i) > 0.0 && dist[static_cast<std::size_t>(i)] > 0.0f) cj.push_back(i);
          }
          std::stable_sort(cj.begin(), cj.end(), [&](idx_t u, idx_t v) {
            return dist[static_cast<std::size_t>(u)] > dist[static_cast<std::size_t>(v)];
          });
        }
        std::size_t& u = used[static_cast<std::size_t>(j)];
        if (u >= cj.size()) continue;  // nothing left to split off: drop this donor
        const idx_t i = cj[u++];
        std::copy(x + i * d, x + (i + 1) * d, c.begin() + e * d);
        double& ej = err[static_cast<std::size_t>(j)];
        ej -= wt(i) * static_cast<double>(dist[static_cast<std::size_t>(i)]);
        if (ej > 0.0 && u < cj.size()) heap.emplace(ej, -j);
        ++done;
        break;
      }
      // No donor left (fewer distinct points than clusters): the centroid stays where it was.
    }
    return done;
  }
};

}  // namespace

KMeansStats weighted_kmeans(const float* x, idx_t n, int d, const float* w, idx_t k, const KMeansParams& params,
                            float* centroids, std::int32_t* assign) {
  VPTQ_CHECK(d >= 1 && d <= 16, "weighted_kmeans: expected 1 <= d <= 16, got d = ", d);
  VPTQ_CHECK(n >= 1, "weighted_kmeans: expected n >= 1 vectors, got n = ", n);
  VPTQ_CHECK(k >= 1 && k <= n, "weighted_kmeans: expected 1 <= k <= n = ", n, ", got k = ", k);
  VPTQ_CHECK(k <= std::numeric_limits<std::int32_t>::max(), "weighted_kmeans: expected k < 2^31, got k = ", k);
  VPTQ_CHECK(x != nullptr && centroids != nullptr, "weighted_kmeans: x and centroids must not be null");
  VPTQ_CHECK(params.max_iter >= 0, "weighted_kmeans: expected max_iter >= 0, got ", params.max_iter);
  VPTQ_CHECK(params.tol >= 0.0 && std::isfinite(params.tol), "weighted_kmeans: expected finite tol >= 0, got ",
             params.tol);
  VPTQ_CHECK(!params.kmeanspp || params.kmeanspp_sample >= 1,
             "weighted_kmeans: expected kmeanspp_sample >= 1, got ", params.kmeanspp_sample);
  for (idx_t i = 0; i < n * d; ++i)
    VPTQ_CHECK(std::isfinite(x[i]), "weighted_kmeans: x must be finite, got ", x[i], " at flat index ", i);
  if (w) {
    for (idx_t i = 0; i < n; ++i)
      VPTQ_CHECK(std::isfinite(w[i]) && w[i] >= 0.0f, "weighted_kmeans: expected finite weights >= 0, got ",
                 w[i], " at index ", i);
  }

  Lloyd L{x, n, d, w, k, {}, {}, {}, {}, {}, {}, {}, {}};
  L.c.resize(static_cast<std::size_t>(k * d));
  L.a.resize(static_cast<std::size_t>(n));
  L.dist.resize(static_cast<std::size_t>(n));
  Rng rng(params.seed);
  if (params.kmeanspp) {
    init_kmeanspp(x, n, d, w, k, params, rng, L.c.data());
  } else {
    const std::vector<idx_t> pick = sample_distinct(rng, n, k);
    for (idx_t j = 0; j < k; ++j) {
      const idx_t i = pick[static_cast<std::size_t>(j)];
      std::copy(x + i * d, x + (i + 1) * d, L.c.begin() + j * d);
    }
  }

  KMeansStats st;
  double prev = L.assign(false);
  st.inertia.push_back(prev);
  for (int it = 1; it <= params.max_iter; ++it) {
    st.empty_reseeded += L.update();
    const double cur = L.assign(true);
    st.inertia.push_back(cur);
    st.iterations = it;
    VPTQ_CHECK_NUMERIC(std::isfinite(cur), "weighted_kmeans: inertia became non-finite at iteration ", it);
    if (!(prev > 0.0) || prev - cur <= params.tol * prev) break;
    prev = cur;
  }
  std::copy(L.c.begin(), L.c.end(), centroids);
  if (assign) std::copy(L.a.begin(), L.a.end(), assign);
  return st;
}

}  // namespace vptq
