// Shared by the C++ benchmarks: a GemvPlan over random VQ weights (fp16-exact codebooks,
// uniform random indices; kernel speed does not depend on the values).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <vector>

#include "vptq/format.h"
#include "vptq/gemv.h"

namespace vptq_bench {

/// Keeps 11 significant bits (fp16-exact for |f| in the normal range).
inline float round_half(float f) {
  if (f == 0.0f) return f;
  int e = 0;
  std::frexp(f, &e);
  const float q = std::ldexp(1.0f, std::max(e - 11, -24));
  return std::nearbyint(f / q) * q;
}

/// GemvOptions with the VPTQ_BENCH_* environment overrides (see bench_gemv.cpp).
inline vptq::GemvOptions options_from_env() {
  vptq::GemvOptions opt;
  if (const char* e = std::getenv("VPTQ_BENCH_COMPACT")) opt.allow_compact_codebooks = std::atoi(e) != 0;
  if (const char* e = std::getenv("VPTQ_BENCH_BLAS_MIN_BATCH")) opt.blas_min_batch = std::atoll(e);
  if (const char* e = std::getenv("VPTQ_BENCH_SORTED_MIN_BYTES")) opt.sorted_min_codebook_bytes = std::strtoull(e, nullptr, 10);
  if (const char* e = std::getenv("VPTQ_BENCH_SORTED_MAX_RES_BYTES")) opt.sorted_max_residual_bytes = std::strtoull(e, nullptr, 10);
  if (const char* e = std::getenv("VPTQ_BENCH_SORTED_CHUNK_BYTES")) opt.sorted_chunk_bytes = std::strtoull(e, nullptr, 10);
  if (const char* e = std::getenv("VPTQ_BENCH_SORTED_TILE_BLOCKS")) opt.sorted_tile_blocks = std::atoll(e);
  return opt;
}

/// A plan for an M x N layer of config v-k1-k2 (opct % outlier columns with v0/k0).
inline vptq::GemvPlan random_plan(vptq::idx_t M, vptq::idx_t N, int v, vptq::idx_t k1, vptq::idx_t k2, double opct,
                                  int v0, vptq::idx_t k0, vptq::Rng& rng, const vptq::GemvOptions& opt) {
  const vptq::VQLayout L = vptq::make_layout(M, N, v, k1, k2, opct, opct > 0 ? v0 : 0, opct > 0 ? k0 : 0, 1);
  std::vector<float> cb(k1 * v), rcb(k2 * v), ocb(L.k0 * L.v0);
  for (auto& f : cb) f = round_half(static_cast<float>(rng.uniform()));
  for (auto& f : rcb) f = round_half(static_cast<float>(rng.uniform() * 0.1));
  for (auto& f : ocb) f = round_half(static_cast<float>(rng.uniform()));
  const vptq::idx_t nb = L.num_indices();
  std::vector<std::uint16_t> idx(nb * L.group_size), ridx(k2 > 0 ? idx.size() : 0),
      oidx(L.num_outlier_indices() * L.outlier_size);
  for (auto& i : idx) i = static_cast<std::uint16_t>(rng.below(k1));
  for (auto& i : ridx) i = static_cast<std::uint16_t>(rng.below(k2));
  for (auto& i : oidx) i = static_cast<std::uint16_t>(rng.below(L.k0));
  vptq::VQWeightsView w;
  w.layout = L;
  w.centroids = cb.data();
  w.res_centroids = k2 > 0 ? rcb.data() : nullptr;
  w.outlier_centroids = L.k0 > 0 ? ocb.data() : nullptr;
  w.indices = idx.data();
  w.res_indices = k2 > 0 ? ridx.data() : nullptr;
  w.outlier_indices = L.k0 > 0 ? oidx.data() : nullptr;
  return vptq::GemvPlan(w, nullptr, opt);
}

}  // namespace vptq_bench
