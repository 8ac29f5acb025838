// Bindings of the VQ weight format: layout, index bit packing, weight checks
// and the reference dequantization; plus the shared helpers of format_view.h.
#include <algorithm>
#include <climits>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "bind.h"
#include "format_view.h"
#include "vptq/format.h"

namespace vptq::bind {

namespace {

idx_t dict_int(const py::dict& d, const char* key) {
  VPTQ_CHECK(d.contains(key), "layout: missing key '", key, "'");
  const py::object obj = d[key];
  if (PyBool_Check(obj.ptr()) || !PyIndex_Check(obj.ptr()))
    throw py::type_error(std::string("layout['") + key + "']: expected an int, got " +
                         std::string(py::str(py::type::of(obj).attr("__name__"))));
  const py::object as_int = py::reinterpret_steal<py::object>(PyNumber_Index(obj.ptr()));
  if (!as_int) throw py::error_already_set();
  int overflow = 0;
  const long long x = PyLong_AsLongLongAndOverflow(as_int.ptr(), &overflow);
  VPTQ_CHECK(overflow == 0, "layout['", key, "']: value out of range");
  return static_cast<idx_t>(x);
}

int dict_small_int(const py::dict& d, const char* key) {
  const idx_t x = dict_int(d, key);
  VPTQ_CHECK(x >= INT_MIN && x <= INT_MAX, "layout['", key, "']: value out of range, got ", x);
  return static_cast<int>(x);
}

template <class T>
const T* opt_data(const std::optional<CArray<T>>& a) {
  return a ? a->data() : nullptr;
}

/// Checks that an optional array is present iff `required` (when `allowed`).
template <class T>
void check_opt(const std::optional<CArray<T>>& a, const char* name, bool required, bool allowed,
               std::initializer_list<py::ssize_t> shape, const char* why) {
  if (!allowed) {
    VPTQ_CHECK(!a, name, ": expected None because ", why, ", got an array of shape ", shape_str(*a));
    return;
  }
  VPTQ_CHECK(a || !required, name, ": expected an array because ", why, ", got None");
  if (a) check_shape(*a, name, shape);
}

/// ndim >= 1 and rows = product of the leading dims.
idx_t leading_rows(const py::array& a, const char* name) {
  VPTQ_CHECK(a.ndim() >= 1, name, ": expected at least 1 dimension, got a 0-d array");
  idx_t rows = 1;
  for (py::ssize_t i = 0; i + 1 < a.ndim(); ++i) rows *= static_cast<idx_t>(a.shape(i));
  return rows;
}

std::vector<py::ssize_t> shape_with_last(const py::array& a, py::ssize_t last) {
  std::vector<py::ssize_t> s(a.shape(), a.shape() + a.ndim());
  s.back() = last;
  return s;
}

}  // namespace

VQLayout layout_from_dict(const py::dict& d) {
  VQLayout L;
  L.M = dict_int(d, "M");
  L.N = dict_int(d, "N");
  L.v = dict_small_int(d, "v");
  L.k1 = dict_int(d, "k1");
  L.k2 = dict_int(d, "k2");
  L.v0 = dict_small_int(d, "v0");
  L.k0 = dict_int(d, "k0");
  L.group_num = dict_small_int(d, "group_num");
  L.outlier_size = dict_int(d, "outlier_size");
  L.group_size = dict_int(d, "group_size");
  check_layout(L);
  return L;
}

py::dict layout_to_dict(const VQLayout& L) {
  py::dict d;
  d["M"] = L.M;
  d["N"] = L.N;
  d["v"] = L.v;
  d["k1"] = L.k1;
  d["k2"] = L.k2;
  d["v0"] = L.v0;
  d["k0"] = L.k0;
  d["group_num"] = L.group_num;
  d["outlier_size"] = L.outlier_size;
  d["group_size"] = L.group_size;
  d["num_indices"] = L.num_indices();
  d["num_outlier_indices"] = L.num_outlier_indices();
  d["index_bits"] = L.index_bits();
  d["res_index_bits"] = L.res_index_bits();
  d["outlier_index_bits"] = L.outlier_index_bits();
  d["packed_words"] = L.packed_words();
  return d;
}

VQWeightsView make_view(const VQLayout& L, const CArray<float>& centroids,
                        const std::optional<CArray<float>>& res_centroids,
                        const std::optional<CArray<float>>& outlier_centroids,
                        const CArray<std::uint16_t>& indices,
                        const std::optional<CArray<std::uint16_t>>& res_indices,
                        const std::optional<CArray<std::uint16_t>>& outlier_indices,
                        const std::optional<CArray<std::int64_t>>& perm,
                        const std::optional<CArray<float>>& scale,
                        const std::optional<CArray<float>>& bias) {
  check_layout(L);
  const auto G = static_cast<py::ssize_t>(L.group_num);
  const auto R = static_cast<py::ssize_t>(L.num_indices());
  const auto gs = static_cast<py::ssize_t>(L.group_size);
  const auto N = static_cast<py::ssize_t>(L.N);
  const bool res = L.k2 > 0, out = L.k0 > 0;

  check_shape(centroids, "centroids", {G, static_cast<py::ssize_t>(L.k1), L.v});
  check_opt(res_centroids, "res_centroids", res, res, {G, static_cast<py::ssize_t>(L.k2), L.v}, "k2 > 0");
  check_opt(outlier_centroids, "outlier_centroids", out, out, {static_cast<py::ssize_t>(L.k0), L.v0}, "k0 > 0");
  check_shape(indices, "indices", {G, R, gs});
  check_opt(res_indices, "res_indices", res, res, {G, R, gs}, "k2 > 0");
  check_opt(outlier_indices, "outlier_indices", L.outlier_size > 0, out,
            {static_cast<py::ssize_t>(L.num_outlier_indices()), static_cast<py::ssize_t>(L.outlier_size)},
            out ? "outlier_size > 0" : "k0 == 0");
  check_opt(perm, "perm", false, true, {N}, "");
  check_opt(scale, "scale", false, true, {N}, "");
  check_opt(bias, "bias", false, true, {N}, "");

  VQWeightsView w;
  w.layout = L;
  w.centroids = centroids.data();
  w.res_centroids = opt_data(res_centroids);
  w.outlier_centroids = opt_data(outlier_centroids);
  w.indices = indices.data();
  w.res_indices = opt_data(res_indices);
  w.outlier_indices = opt_data(outlier_indices);
  w.perm = opt_data(perm);
  w.scale = opt_data(scale);
  w.bias = opt_data(bias);
  return w;
}

namespace {

constexpr const char* kViewArgsDoc =
    "centroids f32[G,k1,v]; res_centroids f32[G,k2,v] | None (iff k2 > 0); outlier_centroids f32[k0,v0] | None "
    "(iff k0 > 0); indices u16[G,num_indices,group_size]; res_indices like indices | None (iff k2 > 0); "
    "outlier_indices u16[num_outlier_indices,outlier_size] | None; perm i64[N] | None (identity); "
    "scale, bias f32[N] | None (per original column).";

}  // namespace

VPTQ_REGISTER_BINDINGS(format) {
  m.def(
      "make_layout",
      [](idx_t M, idx_t N, int v, idx_t k1, idx_t k2, double outlier_percent, int v0, idx_t k0, int group_num) {
        return layout_to_dict(make_layout(M, N, v, k1, k2, outlier_percent, v0, k0, group_num));
      },
      py::arg("M"), py::arg("N"), py::arg("v"), py::arg("k1"), py::arg("k2") = 0, py::arg("outlier_percent") = 0.0,
      py::arg("v0") = 0, py::arg("k0") = 0, py::arg("group_num") = 1,
      "Layout of a quantized Linear W[M, N] (reference get_group_setting) as a dict of all VQLayout fields plus "
      "num_indices, num_outlier_indices, index_bits, res_index_bits, outlier_index_bits, packed_words. "
      "k2 = 0: no residual; k0 = 0: no outliers (then N % group_num == 0 is required).");

  m.def(
      "check_layout", [](const py::dict& layout) { return layout_to_dict(layout_from_dict(layout)); },
      py::arg("layout"),
      "Validates a layout dict (keys M, N, v, k1, k2, v0, k0, group_num, outlier_size, group_size) and returns "
      "it normalised with the derived fields.");

  m.def(
      "pack_indices",
      [](const CArray<std::uint16_t>& idx, const std::optional<CArray<std::uint16_t>>& ridx, int b1, int b2) {
        const idx_t rows = leading_rows(idx, "idx");
        const auto cols = static_cast<idx_t>(idx.shape(idx.ndim() - 1));
        const idx_t words = packed_row_words(cols, b1, b2);
        VPTQ_CHECK(ridx || b2 == 0, "ridx: expected an array of shape ", shape_str(idx), " because b2 = ", b2,
                   " > 0, got None");
        if (ridx) {
          VPTQ_CHECK(ridx->ndim() == idx.ndim() && std::equal(idx.shape(), idx.shape() + idx.ndim(), ridx->shape()),
                     "ridx: expected shape ", shape_str(idx), " (same as idx), got ", shape_str(*ridx));
        }
        auto out = empty<std::uint32_t>(shape_with_last(idx, static_cast<py::ssize_t>(words)));
        const std::uint16_t* pi = idx.data();
        const std::uint16_t* pr = ridx ? ridx->data() : nullptr;
        std::uint32_t* po = out.mutable_data();
        {
          py::gil_scoped_release release;
          pack_indices(pi, pr, rows, cols, b1, b2, po);
        }
        return out;
      },
      py::arg("idx").noconvert(), py::arg("ridx").noconvert().none(true), py::arg("b1"), py::arg("b2") = 0,
      "Packs codes (res << b1) | idx of width b1 + b2 into the LSB-first 32-bit bitstream of the VPTQ format, "
      "one stream per row along the last axis. idx, ridx: uint16[..., cols] -> uint32[..., ceil(cols*(b1+b2)/32)]. "
      "ValueError if a code does not fit its width.");

  m.def(
      "unpack_indices",
      [](const CArray<std::uint32_t>& packed, idx_t cols, int b1, int b2) {
        const idx_t rows = leading_rows(packed, "packed");
        const idx_t words = packed_row_words(cols, b1, b2);
        const auto got = static_cast<idx_t>(packed.shape(packed.ndim() - 1));
        VPTQ_CHECK(got == words, "packed: expected last dimension ceil(cols * (b1 + b2) / 32) = ", words,
                   " for cols = ", cols, ", b1 = ", b1, ", b2 = ", b2, ", got ", got);
        const auto shape = shape_with_last(packed, static_cast<py::ssize_t>(cols));
        auto idx = empty<std::uint16_t>(shape);
        std::optional<CArray<std::uint16_t>> ridx;
        if (b2 > 0) ridx = empty<std::uint16_t>(shape);
        const std::uint32_t* pp = packed.data();
        std::uint16_t* pi = idx.mutable_data();
        std::uint16_t* pr = ridx ? ridx->mutable_data() : nullptr;
        {
          py::gil_scoped_release release;
          unpack_indices(pp, rows, cols, b1, b2, pi, pr);
        }
        return std::make_pair(std::move(idx), std::move(ridx));
      },
      py::arg("packed").noconvert(), py::arg("cols"), py::arg("b1"), py::arg("b2") = 0,
      "Inverse of pack_indices: uint32[..., words] -> (idx uint16[..., cols], ridx uint16[..., cols] or None "
      "when b2 == 0). ValueError unless words == ceil(cols*(b1+b2)/32).");

  m.def(
      "check_weights",
      [](const py::dict& layout, const CArray<float>& centroids, const std::optional<CArray<float>>& res_centroids,
         const std::optional<CArray<float>>& outlier_centroids, const CArray<std::uint16_t>& indices,
         const std::optional<CArray<std::uint16_t>>& res_indices,
         const std::optional<CArray<std::uint16_t>>& outlier_indices, const std::optional<CArray<std::int64_t>>& perm,
         const std::optional<CArray<float>>& scale, const std::optional<CArray<float>>& bias) {
        const VQWeightsView w = make_view(layout_from_dict(layout), centroids, res_centroids, outlier_centroids,
                                          indices, res_indices, outlier_indices, perm, scale, bias);
        py::gil_scoped_release release;
        check_weights(w);
      },
      py::arg("layout"), py::arg("centroids").noconvert(), py::arg("res_centroids").noconvert().none(true),
      py::arg("outlier_centroids").noconvert().none(true), py::arg("indices").noconvert(),
      py::arg("res_indices").noconvert() = py::none(), py::arg("outlier_indices").noconvert() = py::none(),
      py::arg("perm").noconvert() = py::none(), py::arg("scale").noconvert() = py::none(),
      py::arg("bias").noconvert() = py::none(),
      (std::string("Validates unpacked VQ weights against the layout (shapes, index ranges, perm is a "
                   "permutation, finite values); ValueError naming the first problem. ") +
       kViewArgsDoc)
          .c_str());

  m.def(
      "dequantize",
      [](const py::dict& layout, const CArray<float>& centroids, const std::optional<CArray<float>>& res_centroids,
         const std::optional<CArray<float>>& outlier_centroids, const CArray<std::uint16_t>& indices,
         const std::optional<CArray<std::uint16_t>>& res_indices,
         const std::optional<CArray<std::uint16_t>>& outlier_indices, const std::optional<CArray<std::int64_t>>& perm,
         const std::optional<CArray<float>>& scale, const std::optional<CArray<float>>& bias) {
        const VQWeightsView w = make_view(layout_from_dict(layout), centroids, res_centroids, outlier_centroids,
                                          indices, res_indices, outlier_indices, perm, scale, bias);
        auto out = empty<float>({static_cast<py::ssize_t>(w.layout.M), static_cast<py::ssize_t>(w.layout.N)});
        float* po = out.mutable_data();
        {
          py::gil_scoped_release release;
          dequantize(w, po);  // runs check_weights first
        }
        return out;
      },
      py::arg("layout"), py::arg("centroids").noconvert(), py::arg("res_centroids").noconvert().none(true),
      py::arg("outlier_centroids").noconvert().none(true), py::arg("indices").noconvert(),
      py::arg("res_indices").noconvert() = py::none(), py::arg("outlier_indices").noconvert() = py::none(),
      py::arg("perm").noconvert() = py::none(), py::arg("scale").noconvert() = py::none(),
      py::arg("bias").noconvert() = py::none(),
      (std::string("Dense reconstruction W_hat f32[M, N] of unpacked VQ weights (design note §3.4): outlier "
                   "columns first, then groups, un-permuted by perm, then W*scale + bias per original column. "
                   "Runs check_weights first. ") +
       kViewArgsDoc)
          .c_str());
}

}  // namespace vptq::bind
