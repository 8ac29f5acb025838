// Reusable binding helpers for the VQ weight format (implemented in format.cpp
// of this folder): layout <-> Python dict and a checked VQWeightsView built from
// numpy arrays. Used by the format, GEMV and quantizer bindings.
#pragma once

#include <optional>

#include "bind.h"
#include "vptq/format.h"

namespace vptq::bind {

/// Layout from a dict with int keys M, N, v, k1, k2, v0, k0, group_num,
/// outlier_size, group_size (other keys, e.g. the derived ones written by
/// layout_to_dict, are ignored). Runs check_layout. Missing key / bad value ->
/// ValueError, non-integer value -> TypeError.
VQLayout layout_from_dict(const py::dict& d);

/// All VQLayout fields plus the derived num_indices, num_outlier_indices,
/// index_bits, res_index_bits, outlier_index_bits, packed_words.
py::dict layout_to_dict(const VQLayout& L);

/// Builds a view over the arrays (which must outlive it) after checking
/// presence and shapes against L (ValueError "name: expected shape (...), got (...)"):
///   centroids         f32 [G, k1, v]
///   res_centroids     f32 [G, k2, v]            required iff k2 > 0, else None
///   outlier_centroids f32 [k0, v0]              required iff k0 > 0, else None
///   indices           u16 [G, num_indices, group_size]
///   res_indices       u16 [G, num_indices, group_size]  required iff k2 > 0, else None
///   outlier_indices   u16 [num_outlier_indices, outlier_size]  required iff outlier_size > 0;
///                     None when k0 == 0; optional when k0 > 0 and outlier_size == 0
///   perm              i64 [N] or None (identity); scale, bias f32 [N] or None.
/// Does not look at the values: call vptq::check_weights (with the GIL released) for that.
VQWeightsView make_view(const VQLayout& L, const CArray<float>& centroids,
                        const std::optional<CArray<float>>& res_centroids,
                        const std::optional<CArray<float>>& outlier_centroids,
                        const CArray<std::uint16_t>& indices,
                        const std::optional<CArray<std::uint16_t>>& res_indices,
                        const std::optional<CArray<std::uint16_t>>& outlier_indices,
                        const std::optional<CArray<std::int64_t>>& perm,
                        const std::optional<CArray<float>>& scale,
                        const std::optional<CArray<float>>& bias);

}  // namespace vptq::bind
