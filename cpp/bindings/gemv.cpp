// Bindings of the fused VPTQ GEMV: _core.GemvPlan.
#include <memory>
#include <optional>
#include <string>

#include "bind.h"
#include "format_view.h"
#include "vptq/gemv.h"
#include "vptq/simd.h"

namespace vptq::bind {

namespace {

std::unique_ptr<GemvPlan> make_plan(const py::dict& layout, const CArray<float>& centroids,
                                    const std::optional<CArray<float>>& res_centroids,
                                    const std::optional<CArray<float>>& outlier_centroids,
                                    const CArray<std::uint16_t>& indices,
                                    const std::optional<CArray<std::uint16_t>>& res_indices,
                                    const std::optional<CArray<std::uint16_t>>& outlier_indices,
                                    const std::optional<CArray<std::int64_t>>& perm,
                                    const std::optional<CArray<float>>& scale, const std::optional<CArray<float>>& bias,
                                    const std::optional<CArray<float>>& layer_bias, bool compact_codebooks,
                                    idx_t blas_min_batch, bool sorted_layout) {
  const VQWeightsView w = make_view(layout_from_dict(layout), centroids, res_centroids, outlier_centroids, indices,
                                    res_indices, outlier_indices, perm, scale, bias);
  const float* lb = nullptr;
  if (layer_bias) {
    check_shape(*layer_bias, "layer_bias", {static_cast<py::ssize_t>(w.layout.M)});
    lb = layer_bias->data();
  }
  GemvOptions opt;
  opt.allow_compact_codebooks = compact_codebooks;
  VPTQ_CHECK(blas_min_batch >= -1, "blas_min_batch: expected >= 0 (0 = never) or -1 (automatic), got ",
             blas_min_batch);
  opt.blas_min_batch = blas_min_batch;
  if (!sorted_layout) opt.sorted_min_codebook_bytes = 0;
  py::gil_scoped_release release;
  return std::make_unique<GemvPlan>(w, lb, opt);  // validates (check_weights) and copies
}

}  // namespace

VPTQ_REGISTER_BINDINGS(gemv) {
  py::class_<GemvPlan>(m, "GemvPlan",
                       "A quantized Linear prepared for y = x @ W_hat.T + bias straight from VPTQ indices and "
                       "codebooks (never materialising W_hat). Owns copies of everything it needs.")
      .def(py::init(&make_plan), py::arg("layout"), py::arg("centroids").noconvert(),
           py::arg("res_centroids").noconvert().none(true), py::arg("outlier_centroids").noconvert().none(true),
           py::arg("indices").noconvert(), py::arg("res_indices").noconvert() = py::none(),
           py::arg("outlier_indices").noconvert() = py::none(), py::arg("perm").noconvert() = py::none(),
           py::arg("scale").noconvert() = py::none(), py::arg("bias").noconvert() = py::none(),
           py::arg("layer_bias").noconvert() = py::none(), py::arg("compact_codebooks") = true,
           py::arg("blas_min_batch") = GemvOptions().blas_min_batch, py::arg("sorted_layout") = true,
           "Builds the kernel layout from unpacked VQ weights (same arrays as dequantize; layer_bias f32[M] or "
           "None). Validates everything (ValueError on bad shapes, out-of-range indices, non-permutation perm, "
           "non-finite values). compact_codebooks: allow exact fp16/bf16 storage of large codebooks. "
           "blas_min_batch: batches with at least this many rows use dequantized tiles + BLAS (0 = never, -1 = "
           "automatic: 48 or 64 depending on the codebooks). sorted_layout: allow the sorted (codebook-chunked) "
           "layout for codebooks beyond ~96 KB (faster lookups, 4 instead of 2 bytes per index).")
      .def(
          "forward",
          [](const GemvPlan& p, const CArray<float>& x, const std::optional<std::string>& level) {
            check_shape(x, "x", {-1, static_cast<py::ssize_t>(p.in_features())});
            const py::ssize_t batch = x.shape(0);
            VPTQ_CHECK(batch >= 1, "x: expected at least one row (batch >= 1), got batch 0");
            const SimdLevel lv = level ? parse_simd_level(*level) : get_simd_level();
            auto y = empty<float>({batch, static_cast<py::ssize_t>(p.out_features())});
            const float* px = x.data();
            float* py_ = y.mutable_data();
            {
              py::gil_scoped_release release;
              p.forward(px, batch, py_, lv);
            }
            return y;
          },
          py::arg("x").noconvert(), py::arg("level") = py::none(),
          "y f32[B, M] = x f32[B, N] @ W_hat.T + bias. level: force a SIMD level ('scalar', 'avx2', 'avx512'); "
          "default: the current vptq.simd_level(). NaN/Inf in a row of x propagate to that row of y.")
      .def(
          "dequantize",
          [](const GemvPlan& p) {
            auto out = empty<float>({static_cast<py::ssize_t>(p.out_features()), static_cast<py::ssize_t>(p.in_features())});
            float* po = out.mutable_data();
            {
              py::gil_scoped_release release;
              p.dequantize(po);
            }
            return out;
          },
          "Dense W_hat f32[M, N] rebuilt from the plan's own buffers.")
      .def_property(
          "blas_min_batch", [](const GemvPlan& p) { return p.options().blas_min_batch; },
          [](GemvPlan& p, idx_t b) {
            VPTQ_CHECK(b >= 0, "blas_min_batch: expected >= 0 (0 = never), got ", b);
            p.set_blas_min_batch(b);
          },
          "Batches with at least this many rows use dequantized tiles + BLAS (0 = never).")
      .def_property(
          "hist_min_batch", [](const GemvPlan& p) { return p.options().hist_min_batch; },
          [](GemvPlan& p, idx_t b) {
            VPTQ_CHECK(b >= 0, "hist_min_batch: expected >= 0 (0 = never), got ", b);
            p.set_hist_min_batch(b);
          },
          "Batches with at least this many rows use the histogram kernel on small-codebook sections (0 = never).")
      .def_property_readonly("in_features", &GemvPlan::in_features)
      .def_property_readonly("out_features", &GemvPlan::out_features)
      .def_property_readonly("layout", [](const GemvPlan& p) { return layout_to_dict(p.layout()); })
      .def_property_readonly("codebook_storage", &GemvPlan::codebook_storage,
                             "Storage of the main codebooks inside the plan: 'f32', 'f16' or 'bf16' (always exact).")
      .def_property_readonly("memory_bytes", &GemvPlan::memory_bytes, "Bytes held by the plan.")
      .def_property_readonly("sorted_sections", &GemvPlan::sorted_sections,
                             "Number of sections (outliers, groups) in the sorted (codebook-chunked) layout.")
      .def_property_readonly("kernel_bytes", &GemvPlan::kernel_bytes,
                             "Bytes of indices + codebooks one forward streams.");
}

}  // namespace vptq::bind
