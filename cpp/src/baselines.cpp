// Scalar baselines: round-to-nearest and GPTQ with asymmetric min/max grids.
//
// Grid of one (row, group): the range [min(w_min, 0), max(w_max, 0)] (it always contains 0,
// so the integer zero point lies in [0, 2^bits - 1]) split into 2^bits - 1 steps:
//   scale = (hi - lo) / (2^bits - 1),  zero = clamp(round(-lo / scale), 0, 2^bits - 1),
//   code  = clamp(round(w / scale) + zero, 0, 2^bits - 1),  ŵ = (code - zero) · scale.
// A constant group c is stored exactly: scale = |c| (1 if c = 0), zero = 1 if c < 0 else 0.
#include "vptq/baselines.h"

#include "blas_threads.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace vptq {

namespace {

struct Grid {
  float scale;
  float zero;
};

/// Smallest scale used (keeps w / scale finite for groups with a denormal range).
constexpr float kMinScale = 1e-30f;
/// Rows per GPTQ task (fixed, so results do not depend on the thread count).
constexpr idx_t kGptqRows = 32;

/// Grid of len values w[0], w[1], ... (contiguous).
Grid make_grid(const float* w, idx_t len, int maxq) {
  float vmin = w[0], vmax = w[0];
  for (idx_t t = 1; t < len; ++t) {
    vmin = std::min(vmin, w[t]);
    vmax = std::max(vmax, w[t]);
  }
  if (vmin == vmax) {
    if (vmin == 0) return {1.0f, 0.0f};
    return vmin > 0 ? Grid{vmin, 0.0f} : Grid{-vmin, 1.0f};
  }
  const double lo = std::min(vmin, 0.0f);
  const double hi = std::max(vmax, 0.0f);
  float scale = static_cast<float>((hi - lo) / maxq);
  if (!(scale >= kMinScale)) scale = kMinScale;
  const float zero = std::clamp(std::nearbyint(static_cast<float>(-lo) / scale), 0.0f, static_cast<float>(maxq));
  return {scale, zero};
}

inline std::uint8_t quant_code(float w, const Grid& g, int maxq) {
  const float q = std::nearbyint(w / g.scale) + g.zero;
  return static_cast<std::uint8_t>(std::clamp(q, 0.0f, static_cast<float>(maxq)));
}

inline float dequant_code(std::uint8_t c, const Grid& g) { return (static_cast<float>(c) - g.zero) * g.scale; }

/// fn(i) for every row i in [0, M), parallel over blocks of about 2^16 elements.
template <class F>
void for_row_blocks(idx_t M, idx_t N, F&& fn) {
  const idx_t rows = std::max<idx_t>(1, (idx_t{1} << 16) / N);
  parallel_for((M + rows - 1) / rows, [&](idx_t b) {
    const idx_t end = std::min(M, (b + 1) * rows);
    for (idx_t i = b * rows; i < end; ++i) fn(i);
  });
}

/// Validates the common arguments and fills the result's shape fields.
ScalarQuantResult start_result(const char* fn, const float* W, idx_t M, idx_t N, const ScalarQuantParams& p) {
  VPTQ_CHECK(M >= 1 && N >= 1, fn, ": expected M >= 1 and N >= 1, got M = ", M, ", N = ", N);
  VPTQ_CHECK(W != nullptr, fn, ": W is null");
  VPTQ_CHECK(p.bits >= 1 && p.bits <= 8, fn, ": expected bits in [1, 8], got ", p.bits);
  VPTQ_CHECK(p.block_size >= 1, fn, ": expected block_size >= 1, got ", p.block_size);
  for (idx_t i = 0; i < M * N; ++i) {
    VPTQ_CHECK(std::isfinite(W[i]), fn, ": expected finite weights, got ", W[i], " at W[", i / N, ", ", i % N, "]");
  }
  ScalarQuantResult r;
  r.M = M;
  r.N = N;
  r.bits = p.bits;
  r.group_size = p.group_size <= 0 ? N : std::min(p.group_size, N);
  r.num_groups = (N + r.group_size - 1) / r.group_size;
  r.codes.assign(static_cast<std::size_t>(M * N), 0);
  r.scale.assign(static_cast<std::size_t>(M * r.num_groups), 0.0f);
  r.zero.assign(static_cast<std::size_t>(M * r.num_groups), 0.0f);
  r.g_idx.assign(static_cast<std::size_t>(N), 0);
  return r;
}

}  // namespace

void ScalarQuantResult::dequantize(float* out) const {
  VPTQ_CHECK(out != nullptr, "ScalarQuantResult::dequantize: out is null");
  VPTQ_CHECK(codes.size() == static_cast<std::size_t>(M * N) && g_idx.size() == static_cast<std::size_t>(N) &&
                 scale.size() == static_cast<std::size_t>(M * num_groups) && zero.size() == scale.size(),
             "ScalarQuantResult::dequantize: inconsistent sizes (M = ", M, ", N = ", N, ", num_groups = ",
             num_groups, ")");
  for (idx_t j = 0; j < N; ++j) {
    VPTQ_CHECK(g_idx[static_cast<std::size_t>(j)] >= 0 && g_idx[static_cast<std::size_t>(j)] < num_groups,
               "ScalarQuantResult::dequantize: expected g_idx in [0, ", num_groups, "), got ",
               g_idx[static_cast<std::size_t>(j)], " at column ", j);
  }
  for_row_blocks(M, N, [&](idx_t i) {
    const float* sc = scale.data() + i * num_groups;
    const float* ze = zero.data() + i * num_groups;
    const std::uint8_t* c = codes.data() + i * N;
    float* o = out + i * N;
    for (idx_t j = 0; j < N; ++j) {
      const std::int32_t g = g_idx[static_cast<std::size_t>(j)];
      o[j] = dequant_code(c[j], Grid{sc[g], ze[g]});
    }
  });
}

ScalarQuantResult rtn_quantize(const float* W, idx_t M, idx_t N, const ScalarQuantParams& params) {
  ScalarQuantResult r = start_result("rtn_quantize", W, M, N, params);
  const int maxq = (1 << params.bits) - 1;
  const idx_t gs = r.group_size, G = r.num_groups;
  for (idx_t j = 0; j < N; ++j) r.g_idx[static_cast<std::size_t>(j)] = static_cast<std::int32_t>(j / gs);
  for_row_blocks(M, N, [&](idx_t i) {
    const float* w = W + i * N;
    std::uint8_t* c = r.codes.data() + i * N;
    for (idx_t g = 0; g < G; ++g) {
      const idx_t j0 = g * gs, j1 = std::min(N, j0 + gs);
      const Grid grid = make_grid(w + j0, j1 - j0, maxq);
      r.scale[static_cast<std::size_t>(i * G + g)] = grid.scale;
      r.zero[static_cast<std::size_t>(i * G + g)] = grid.zero;
      for (idx_t j = j0; j < j1; ++j) c[j] = quant_code(w[j], grid, maxq);
    }
  });
  return r;
}

ScalarQuantResult gptq_quantize(const float* W, idx_t M, idx_t N, const PreparedHessian& H,
                                const ScalarQuantParams& params) {
  ScalarQuantResult r = start_result("gptq_quantize", W, M, N, params);
  VPTQ_CHECK(H.n == N, "gptq_quantize: expected a prepared Hessian with n = N = ", N, ", got n = ", H.n);
  const std::size_t nn = static_cast<std::size_t>(N * N);
  VPTQ_CHECK(H.U.size() == nn && H.perm.size() == static_cast<std::size_t>(N) &&
                 H.dead.size() == static_cast<std::size_t>(N),
             "gptq_quantize: inconsistent PreparedHessian (expected U of ", nn, " entries and perm/dead of ", N,
             ", got ", H.U.size(), ", ", H.perm.size(), ", ", H.dead.size(), ")");
  {
    std::vector<unsigned char> seen(static_cast<std::size_t>(N), 0);
    for (idx_t p = 0; p < N; ++p) {
      const idx_t c = H.perm[static_cast<std::size_t>(p)];
      VPTQ_CHECK(c >= 0 && c < N && !seen[static_cast<std::size_t>(c)],
                 "gptq_quantize: PreparedHessian.perm is not a permutation of [0, ", N, ") (entry ", p, " = ", c,
                 ")");
      seen[static_cast<std::size_t>(c)] = 1;
    }
    for (idx_t k = 0; k < N; ++k) {
      const float ukk = H.U[static_cast<std::size_t>(k * N + k)];
      VPTQ_CHECK(std::isfinite(ukk) && ukk > 0, "gptq_quantize: expected a positive diagonal in U, got U[", k,
                 ", ", k, "] = ", ukk);
    }
  }
  const int maxq = (1 << params.bits) - 1;
  const idx_t gs = r.group_size, G = r.num_groups;
  const idx_t bs = params.block_size;
  const float* U = H.U.data();
  const idx_t* perm = H.perm.data();
  for (idx_t p = 0; p < N; ++p) r.g_idx[static_cast<std::size_t>(perm[p])] = static_cast<std::int32_t>(p / gs);

  detail::BlasSingleThread blas1;
  parallel_for_dynamic((M + kGptqRows - 1) / kGptqRows, [&](idx_t b) {
    const idx_t r0 = b * kGptqRows;
    const idx_t nr = std::min(M, r0 + kGptqRows) - r0;
    // Rows r0.. of W in permuted column order, dead columns zeroed.
    std::vector<float> Wb(static_cast<std::size_t>(nr * N));  // [nr, N]
    for (idx_t rr = 0; rr < nr; ++rr) {
      const float* src = W + (r0 + rr) * N;
      float* dst = Wb.data() + rr * N;
      for (idx_t p = 0; p < N; ++p) dst[p] = H.dead[static_cast<std::size_t>(perm[p])] ? 0.0f : src[perm[p]];
    }
    std::vector<float> E(static_cast<std::size_t>(nr * bs));  // [nr, block width]: scaled errors
    std::vector<Grid> grid(static_cast<std::size_t>(nr));
    idx_t i = 0;
    while (i < N) {
      // Blocks also end where a group starts, so a group's grid is always computed
      // from fully updated weights.
      const idx_t j = std::min({N, i + bs, (i / gs + 1) * gs});
      const idx_t w = j - i;
      if (i % gs == 0) {
        const idx_t g = i / gs;
        const idx_t len = std::min(gs, N - i);
        for (idx_t rr = 0; rr < nr; ++rr) {
          grid[static_cast<std::size_t>(rr)] = make_grid(Wb.data() + rr * N + i, len, maxq);
          r.scale[static_cast<std::size_t>((r0 + rr) * G + g)] = grid[static_cast<std::size_t>(rr)].scale;
          r.zero[static_cast<std::size_t>((r0 + rr) * G + g)] = grid[static_cast<std::size_t>(rr)].zero;
        }
      }
      for (idx_t k = i; k < j; ++k) {
        const float* Uk = U + k * N;
        const float ukk = Uk[k];
        const idx_t orig = perm[k];
        for (idx_t rr = 0; rr < nr; ++rr) {
          float* row = Wb.data() + rr * N;
          const Grid& gr = grid[static_cast<std::size_t>(rr)];
          const std::uint8_t c = quant_code(row[k], gr, maxq);
          r.codes[static_cast<std::size_t>((r0 + rr) * N + orig)] = c;
          const float e = (row[k] - dequant_code(c, gr)) / ukk;
          E[static_cast<std::size_t>(rr * w + (k - i))] = e;
          for (idx_t c2 = k + 1; c2 < j; ++c2) row[c2] -= e * Uk[c2];
        }
      }
      // Lazy update of the columns after the block: Wb[:, j:] -= E · U[i:j, j:].
      if (j < N) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<int>(nr), static_cast<int>(N - j),
                    static_cast<int>(w), -1.0f, E.data(), static_cast<int>(w), U + i * N + j, static_cast<int>(N),
                    1.0f, Wb.data() + j, static_cast<int>(N));
      }
      i = j;
    }
  });
  return r;
}

}  // namespace vptq
