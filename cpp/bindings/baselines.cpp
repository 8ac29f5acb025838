// Bindings of the scalar baselines (RTN, GPTQ) and their dequantization.
#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

#include "bind.h"
#include "vptq/baselines.h"

namespace vptq::bind {

namespace {

template <class T>
CArray<T> vec_to_numpy(const std::vector<T>& v, std::vector<py::ssize_t> shape) {
  CArray<T> out(std::move(shape));
  std::copy(v.begin(), v.end(), out.mutable_data());
  return out;
}

py::dict result_to_dict(const ScalarQuantResult& r) {
  const auto M = static_cast<py::ssize_t>(r.M), N = static_cast<py::ssize_t>(r.N);
  const auto G = static_cast<py::ssize_t>(r.num_groups);
  py::dict d;
  d["codes"] = vec_to_numpy(r.codes, {M, N});
  d["scale"] = vec_to_numpy(r.scale, {M, G});
  d["zero"] = vec_to_numpy(r.zero, {M, G});
  d["g_idx"] = vec_to_numpy(r.g_idx, {N});
  d["bits"] = r.bits;
  d["group_size"] = r.group_size;
  d["num_groups"] = r.num_groups;
  return d;
}

ScalarQuantParams make_params(int bits, idx_t group_size, int block_size) {
  ScalarQuantParams p;
  p.bits = bits;
  p.group_size = group_size;
  p.block_size = block_size;
  return p;
}

}  // namespace

VPTQ_REGISTER_BINDINGS(baselines) {
  m.def(
      "rtn_quantize",
      [](const CArray<float>& W, int bits, idx_t group_size) {
        check_shape(W, "W", {-1, -1});
        const ScalarQuantParams p = make_params(bits, group_size, 128);
        const float* w = W.data();
        const idx_t M = static_cast<idx_t>(W.shape(0)), N = static_cast<idx_t>(W.shape(1));
        ScalarQuantResult r;
        {
          py::gil_scoped_release release;
          r = rtn_quantize(w, M, N, p);
        }
        return result_to_dict(r);
      },
      py::arg("W").noconvert(), py::arg("bits"), py::arg("group_size"),
      "Round-to-nearest with asymmetric min/max grids per row and group of input columns\n"
      "(group_size <= 0: one group per row). Returns a dict: codes uint8[M, N], scale/zero\n"
      "float32[M, G], g_idx int32[N], bits, group_size (effective), num_groups.");

  m.def(
      "gptq_quantize",
      [](const CArray<float>& W, const PreparedHessian& H, int bits, idx_t group_size, int block_size) {
        check_shape(W, "W", {-1, -1});
        const ScalarQuantParams p = make_params(bits, group_size, block_size);
        const float* w = W.data();
        const idx_t M = static_cast<idx_t>(W.shape(0)), N = static_cast<idx_t>(W.shape(1));
        ScalarQuantResult r;
        {
          py::gil_scoped_release release;
          r = gptq_quantize(w, M, N, H, p);
        }
        return result_to_dict(r);
      },
      py::arg("W").noconvert(), py::arg("hessian"), py::arg("bits"), py::arg("group_size"),
      py::arg("block_size") = 128,
      "GPTQ with a PreparedHessian (act-order iff its perm is not the identity). Same dict as rtn_quantize;\n"
      "codes and g_idx are in the original column order.");

  m.def(
      "scalar_dequantize",
      [](const CArray<std::uint8_t>& codes, const CArray<float>& scale, const CArray<float>& zero,
         const CArray<std::int32_t>& g_idx) {
        check_shape(codes, "codes", {-1, -1});
        check_shape(scale, "scale", {codes.shape(0), -1});
        check_shape(zero, "zero", {codes.shape(0), scale.shape(1)});
        check_shape(g_idx, "g_idx", {codes.shape(1)});
        ScalarQuantResult r;
        r.M = static_cast<idx_t>(codes.shape(0));
        r.N = static_cast<idx_t>(codes.shape(1));
        r.num_groups = static_cast<idx_t>(scale.shape(1));
        r.codes.assign(codes.data(), codes.data() + codes.size());
        r.scale.assign(scale.data(), scale.data() + scale.size());
        r.zero.assign(zero.data(), zero.data() + zero.size());
        r.g_idx.assign(g_idx.data(), g_idx.data() + g_idx.size());
        CArray<float> out({codes.shape(0), codes.shape(1)});
        float* o = out.mutable_data();
        {
          py::gil_scoped_release release;
          r.dequantize(o);
        }
        return out;
      },
      py::arg("codes").noconvert(), py::arg("scale").noconvert(), py::arg("zero").noconvert(),
      py::arg("g_idx").noconvert(),
      "W_hat[i, j] = (codes[i, j] - zero[i, g]) * scale[i, g], g = g_idx[j]; float32[M, N].");
}

}  // namespace vptq::bind
