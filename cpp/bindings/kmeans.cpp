// Bindings of weighted k-means and nearest-centroid search.
#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "bind.h"
#include "vptq/kmeans.h"
#include "vptq/nearest.h"

namespace vptq::bind {

VPTQ_REGISTER_BINDINGS(kmeans) {
  m.def(
      "kmeans",
      [](const CArray<float>& x, idx_t k, const std::optional<CArray<float>>& weights, int max_iter, double tol,
         std::uint64_t seed, bool kmeanspp) {
        check_shape(x, "x", {-1, -1});
        const idx_t n = static_cast<idx_t>(x.shape(0));
        const int d = static_cast<int>(x.shape(1));
        VPTQ_CHECK(d >= 1 && d <= 16, "x: expected 1 <= d <= 16 columns, got ", x.shape(1));
        VPTQ_CHECK(k >= 1 && k <= n, "k: expected 1 <= k <= n = ", n, ", got ", k);
        if (weights) check_shape(*weights, "weights", {x.shape(0)});
        CArray<float> centroids = empty<float>({static_cast<py::ssize_t>(k), d});
        CArray<std::int32_t> assign = empty<std::int32_t>({x.shape(0)});
        KMeansParams p;
        p.max_iter = max_iter;
        p.tol = tol;
        p.seed = seed;
        p.kmeanspp = kmeanspp;
        const float* xp = x.data();
        const float* wp = weights ? weights->data() : nullptr;
        float* cp = centroids.mutable_data();
        std::int32_t* ap = assign.mutable_data();
        KMeansStats st;
        {
          py::gil_scoped_release release;
          st = weighted_kmeans(xp, n, d, wp, k, p, cp, ap);
        }
        return std::make_tuple(centroids, assign, st.inertia, st.iterations);
      },
      py::arg("x").noconvert(), py::arg("k"), py::arg("weights").noconvert() = py::none(),
      py::arg("max_iter") = 100, py::arg("tol") = 1e-5, py::arg("seed") = 0, py::arg("kmeanspp") = false,
      "Weighted k-means (Lloyd). x: float32[n, d] (1 <= d <= 16), weights: float32[n] >= 0 or None.\n"
      "Returns (centroids float32[k, d], assignment int32[n], inertia_history list[float], iterations).\n"
      "inertia_history[0] is for the initial centroids, the last entry for the returned ones.");

  m.def(
      "nearest_centroid",
      [](const CArray<float>& x, const CArray<float>& centroids, const std::string& method) {
        VPTQ_CHECK(method == "fused" || method == "gemm", "method: expected 'fused' or 'gemm', got '", method,
                   "'");
        const bool gemm = method == "gemm";
        check_shape(centroids, "centroids", {-1, -1});
        const idx_t k = static_cast<idx_t>(centroids.shape(0));
        const int d = static_cast<int>(centroids.shape(1));
        VPTQ_CHECK(d >= 1 && d <= 16, "centroids: expected 1 <= d <= 16 columns, got ", centroids.shape(1));
        VPTQ_CHECK(k >= 1, "centroids: expected at least one centroid, got shape ", shape_str(centroids));
        check_shape(x, "x", {-1, centroids.shape(1)});
        const idx_t n = static_cast<idx_t>(x.shape(0));
        CArray<std::int32_t> idx = empty<std::int32_t>({x.shape(0)});
        CArray<float> dist = empty<float>({x.shape(0)});
        const float* xp = x.data();
        const float* cp = centroids.data();
        std::int32_t* ip = idx.mutable_data();
        float* dp = dist.mutable_data();
        {
          py::gil_scoped_release release;
          const CodebookSearcher s(cp, k, d);
          constexpr idx_t B = 1024;
          if (gemm) set_blas_threads(1);
          parallel_for_dynamic((n + B - 1) / B, [&](idx_t b) {
            const idx_t i0 = b * B;
            if (gemm)
              s.search_gemm(xp + i0 * d, std::min(B, n - i0), ip + i0, dp + i0);
            else
              s.search(xp + i0 * d, std::min(B, n - i0), ip + i0, dp + i0);
          });
        }
        return std::make_tuple(idx, dist);
      },
      py::arg("x").noconvert(), py::arg("centroids").noconvert(), py::arg("method") = "fused",
      "Nearest centroid (squared L2, lowest index on ties) of each row of x float32[n, d] among\n"
      "centroids float32[k, d]. Returns (idx int32[n], dist float32[n]). method: 'fused' (SIMD\n"
      "kernel, default) or 'gemm' (BLAS GEMM tiles + argmin; for comparison).");
}

}  // namespace vptq::bind
