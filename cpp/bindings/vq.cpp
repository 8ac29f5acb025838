// Bindings of the VPTQ layer quantizer.
#include <memory>

#include "bind.h"
#include "format_view.h"
#include "vptq/vq.h"

namespace vptq::bind {
namespace {

/// Moves a vector into a numpy array of the given shape without copying.
template <class T>
py::object to_numpy(std::vector<T>&& v, std::vector<py::ssize_t> shape) {
  if (v.empty()) return py::none();
  auto* owned = new std::vector<T>(std::move(v));
  py::capsule owner(owned, [](void* p) { delete static_cast<std::vector<T>*>(p); });
  return CArray<T>(shape, owned->data(), owner);
}

}  // namespace
}  // namespace vptq::bind

VPTQ_REGISTER_BINDINGS(vq) {
  namespace py = pybind11;
  using vptq::bind::CArray;
  using vptq::bind::to_numpy;
  m.def(
      "vptq_quantize",
      [](const CArray<float>& W, const vptq::PreparedHessian& H, int v, vptq::idx_t k1, vptq::idx_t k2,
         double outlier_percent, int v0, vptq::idx_t k0, int group_num, bool enable_norm, bool enable_perm,
         int block_size, int kmeans_iters, double kmeans_tol, std::uint64_t seed, bool error_feedback,
         bool norm_aware_hessian) {
        vptq::bind::check_shape(W, "W", {-1, -1});
        vptq::VQParams P;
        P.v = v;
        P.k1 = k1;
        P.k2 = k2;
        P.outlier_percent = outlier_percent;
        P.v0 = v0;
        P.k0 = k0;
        P.group_num = group_num;
        P.enable_norm = enable_norm;
        P.enable_perm = enable_perm;
        P.block_size = block_size;
        P.kmeans.max_iter = kmeans_iters;
        P.kmeans.tol = kmeans_tol;
        P.kmeans.seed = seed;
        P.error_feedback = error_feedback;
        P.norm_aware_hessian = norm_aware_hessian;
        const vptq::idx_t M = W.shape(0), N = W.shape(1);
        vptq::VQResult r;
        {
          py::gil_scoped_release release;
          r = vptq::vptq_quantize(W.data(), M, N, H, P);
        }
        const auto& L = r.layout;
        const py::ssize_t G = L.group_num, R = L.num_indices(), R0 = L.num_outlier_indices();
        py::dict out;
        out["layout"] = vptq::bind::layout_to_dict(L);
        out["centroids"] = to_numpy(std::move(r.centroids), {G, L.k1, L.v});
        out["res_centroids"] = to_numpy(std::move(r.res_centroids), {G, L.k2, L.v});
        out["outlier_centroids"] = to_numpy(std::move(r.outlier_centroids), {L.k0, L.v0});
        out["indices"] = to_numpy(std::move(r.indices), {G, R, L.group_size});
        out["res_indices"] = to_numpy(std::move(r.res_indices), {G, R, L.group_size});
        out["outlier_indices"] = to_numpy(std::move(r.outlier_indices), {R0, L.outlier_size});
        out["perm"] = to_numpy(std::move(r.perm), {N});
        out["scale"] = to_numpy(std::move(r.scale), {N});
        out["bias"] = to_numpy(std::move(r.bias), {N});
        py::list iters, inertia;
        for (const auto& s : r.kmeans_stats) {
          iters.append(s.iterations);
          inertia.append(s.inertia.empty() ? 0.0 : s.inertia.back());
        }
        out["kmeans_iterations"] = iters;
        out["kmeans_inertia"] = inertia;
        return out;
      },
      py::arg("W").noconvert(), py::arg("hessian"), py::arg("v"), py::arg("k1"), py::arg("k2"),
      py::arg("outlier_percent"), py::arg("v0"), py::arg("k0"), py::arg("group_num"), py::arg("enable_norm"),
      py::arg("enable_perm"), py::arg("block_size"), py::arg("kmeans_iters"), py::arg("kmeans_tol"),
      py::arg("seed"), py::arg("error_feedback"), py::arg("norm_aware_hessian"),
      "Quantize W [M, N] float32 with VPTQ given a prepared Hessian; returns a dict of arrays.");
}
