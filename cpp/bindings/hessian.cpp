// Bindings of the Hessian module: the streaming accumulator, the prepared Hessian
// (an opaque object other bindings accept, with read-only numpy copies of its
// contents) and the proxy loss.
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "bind.h"
#include "vptq/hessian.h"

namespace vptq::bind {

namespace {

template <class T, class U = T>
CArray<T> copy_to_numpy(const std::vector<U>& v, std::vector<py::ssize_t> shape) {
  CArray<T> out(std::move(shape));
  T* dst = out.mutable_data();
  for (std::size_t i = 0; i < v.size(); ++i) dst[i] = static_cast<T>(v[i]);
  return out;
}

template <class T>
void add_batch(HessianAccumulator& acc, const CArray<T>& x) {
  check_shape(x, "x", {-1, static_cast<py::ssize_t>(acc.n())});
  const T* p = x.data();
  const idx_t rows = static_cast<idx_t>(x.shape(0));
  py::gil_scoped_release release;
  acc.add_batch(p, rows);
}

}  // namespace

VPTQ_REGISTER_BINDINGS_AT(hessian, 10) {  // defines PreparedHessian, used by others
  py::class_<HessianAccumulator>(m, "HessianAccumulator",
                                 "Streaming float64 accumulation of S = sum of x x^T over rows of x [rows, n].\n"
                                 "Not safe to share one object between Python threads.")
      .def(py::init<idx_t>(), py::arg("n"))
      .def("add_batch", &add_batch<float>, py::arg("x").noconvert(),
           "Add the rows of x: float32[rows, n] (C-contiguous); rows may be 0. Non-finite -> ValueError.")
      .def("add_batch", &add_batch<double>, py::arg("x").noconvert(),
           "Add the rows of x: float64[rows, n] (C-contiguous); rows may be 0. Non-finite -> ValueError.")
      .def_property_readonly("n", &HessianAccumulator::n)
      .def_property_readonly("count", &HessianAccumulator::count, "Number of rows accumulated.")
      .def("second_moment", [](const HessianAccumulator& a) {
        std::vector<double> E;
        {
          py::gil_scoped_release release;
          E = a.second_moment();
        }
        const auto n = static_cast<py::ssize_t>(a.n());
        return copy_to_numpy<double>(E, {n, n});
      }, "E[x x^T] = S / count as a new float64[n, n]; ValueError if count == 0.")
      .def("sum", [](const HessianAccumulator& a) {
        const auto n = static_cast<py::ssize_t>(a.n());
        return copy_to_numpy<double>(a.sum(), {n, n});
      }, "S = sum of x x^T as a new float64[n, n].")
      .def("merge", &HessianAccumulator::merge, py::arg("other"), "Add another accumulator's sums (same n).");

  py::class_<PreparedHessian>(m, "PreparedHessian",
                              "Everything derived from one Hessian (made by prepare_hessian). Array properties\n"
                              "return new numpy copies; matrices are in the act-order permuted order.")
      .def_property_readonly("n", [](const PreparedHessian& P) { return P.n; })
      .def_property_readonly("scale", [](const PreparedHessian& P) { return P.scale; },
                             "Mean input diagonal; H_norm = H / scale.")
      .def_property_readonly("damp", [](const PreparedHessian& P) { return P.damp; },
                             "Damping added to the normalised diagonal.")
      .def_property_readonly("perm", [](const PreparedHessian& P) {
        return copy_to_numpy<std::int64_t>(P.perm, {static_cast<py::ssize_t>(P.n)});
      }, "int64[n]: perm[p] = original column at permuted position p.")
      .def_property_readonly("diag", [](const PreparedHessian& P) {
        return copy_to_numpy<double>(P.diag, {static_cast<py::ssize_t>(P.n)});
      }, "float64[n]: normalised diagonal, original order, before the dead-column fix.")
      .def_property_readonly("dead", [](const PreparedHessian& P) {
        return copy_to_numpy<bool>(P.dead, {static_cast<py::ssize_t>(P.n)});
      }, "bool[n]: columns whose input diagonal was 0 (original order).")
      .def_property_readonly("H", [](const PreparedHessian& P) {
        const auto n = static_cast<py::ssize_t>(P.n);
        return copy_to_numpy<double>(P.H, {n, n});
      }, "float64[n, n]: normalised, dead-fixed, permuted, undamped Hessian.")
      .def_property_readonly("U", [](const PreparedHessian& P) {
        const auto n = static_cast<py::ssize_t>(P.n);
        return copy_to_numpy<float>(P.U, {n, n});
      }, "float32[n, n]: upper Cholesky factor of (H + damp I)^-1 = U^T U (permuted order).")
      .def("__repr__", [](const PreparedHessian& P) {
        return detail::cat("<vptq._core.PreparedHessian n=", P.n, " scale=", P.scale, " damp=", P.damp, ">");
      });

  m.def(
      "prepare_hessian",
      [](const CArray<double>& H, double percdamp, bool act_order, double max_percdamp) {
        check_shape(H, "H", {-1, H.ndim() == 2 ? H.shape(0) : -1});
        HessianPrepParams p;
        p.percdamp = percdamp;
        p.act_order = act_order;
        p.max_percdamp = max_percdamp;
        const double* ptr = H.data();
        const idx_t n = static_cast<idx_t>(H.shape(0));
        py::gil_scoped_release release;
        return prepare_hessian(ptr, n, p);
      },
      py::arg("H").noconvert(), py::arg("percdamp") = 0.01, py::arg("act_order") = true,
      py::arg("max_percdamp") = 10.0,
      "Normalise, fix dead columns, act-order permute, damp and factor H: float64[n, n] (symmetric).\n"
      "ValueError for bad input, NumericalError if no damping up to max_percdamp makes it definite.");

  m.def(
      "proxy_loss",
      [](const CArray<float>& W, const CArray<float>& W_hat, const CArray<double>& H) {
        check_shape(W, "W", {-1, -1});
        check_shape(W_hat, "W_hat", {W.shape(0), W.shape(1)});
        check_shape(H, "H", {W.shape(1), W.shape(1)});
        const float* w = W.data();
        const float* wq = W_hat.data();
        const double* h = H.data();
        const idx_t M = static_cast<idx_t>(W.shape(0)), N = static_cast<idx_t>(W.shape(1));
        py::gil_scoped_release release;
        return proxy_loss(w, wq, M, N, h);
      },
      py::arg("W").noconvert(), py::arg("W_hat").noconvert(), py::arg("H").noconvert(),
      "tr((W - W_hat) H (W - W_hat)^T) for W, W_hat float32[M, N] and H float64[N, N].");
}

}  // namespace vptq::bind
