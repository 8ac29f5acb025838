// VPTQ layer quantizer (design note §1.2): normalisation, act-order, column
// groups, Hessian-weighted k-means codebooks, then the channel-independent
// second-order pass (GPTQ-style error feedback, one column at a time) with
// optional residual (second full pass) and outlier codebooks.
//
// Rows never interact in the error feedback (each output row only sees its own
// errors through U), so the pass runs independently on fixed chunks of rows,
// which makes it parallel and bit-identical for any thread count.
#include "vptq/vq.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <numeric>

#include "vptq/nearest.h"

namespace vptq {

VQWeightsView VQResult::view() const {
  VQWeightsView w;
  w.layout = layout;
  w.centroids = centroids.data();
  w.res_centroids = res_centroids.empty() ? nullptr : res_centroids.data();
  w.outlier_centroids = outlier_centroids.empty() ? nullptr : outlier_centroids.data();
  w.indices = indices.data();
  w.res_indices = res_indices.empty() ? nullptr : res_indices.data();
  w.outlier_indices = outlier_indices.empty() ? nullptr : outlier_indices.data();
  w.perm = perm.empty() ? nullptr : perm.data();
  w.scale = scale.empty() ? nullptr : scale.data();
  w.bias = bias.empty() ? nullptr : bias.data();
  return w;
}

namespace {

/// A frozen codebook and its prepared searcher.
struct Codebook {
  int v = 0;
  idx_t k = 0;
  const float* c = nullptr;  // [k, v], owned by the VQResult
  std::unique_ptr<CodebookSearcher> searcher;
};

/// Everything the per-chunk pass needs, read-only during the pass.
struct PassContext {
  const VQLayout* L = nullptr;
  idx_t N = 0, M = 0, Mp = 0;      // Mp: padded row count (multiple of v and v0 ends)
  const float* Wt = nullptr;       // [N, Mp]: permuted columns in "centred units" (see below)
  const float* sp = nullptr;       // [N]: feedback scale of each permuted column
  const float* U = nullptr;        // [N, N] upper Cholesky factor of the damped inverse Hessian
  int block = 128;
  bool feedback = true;
  const Codebook* outlier = nullptr;
  const std::vector<Codebook>* main = nullptr;
  const std::vector<Codebook>* res = nullptr;  // nullptr or empty: no residual stage
};

struct PassOutput {
  std::uint16_t* indices = nullptr;          // [G, R, gs]
  std::uint16_t* res_indices = nullptr;      // [G, R, gs] or nullptr
  std::uint16_t* outlier_indices = nullptr;  // [R0, os] or nullptr
  float* qerr = nullptr;                     // [N, Mp] or nullptr: (x - q) in normalised units
};

/// Runs the column loop for output rows [r0, r1) (r0 a multiple of v and v0).
///
/// Working values are kept in "centred units" Wc = Wn * sp, where Wn is the
/// normalised weight. With sp = column scale this is W - bias, so the GPTQ
/// feedback with the unscaled inverse-Hessian factor optimises the true proxy
/// loss; with sp = 1 it is the reference's feedback in normalised space.
void run_pass_chunk(const PassContext& ctx, idx_t r0, idx_t r1, const PassOutput& out) {
  const VQLayout& L = *ctx.L;
  const idx_t N = ctx.N, rows = r1 - r0;
  const idx_t os = L.outlier_size, gs = L.group_size;
  const idx_t R = L.num_indices(), R0 = L.num_outlier_indices();
  const idx_t real_rows = std::max<idx_t>(0, std::min(r1, ctx.M) - r0);

  std::vector<float> Wc(static_cast<std::size_t>(N * rows));
  for (idx_t p = 0; p < N; ++p)
    std::copy_n(ctx.Wt + p * ctx.Mp + r0, rows, Wc.data() + p * rows);

  const int B = ctx.block;
  std::vector<float> E(static_cast<std::size_t>(B) * rows, 0.0f);
  std::vector<float> x(rows), q(rows), resid(rows);
  std::vector<std::int32_t> a(rows), b(rows);

  for (idx_t i = 0; i < N; i += B) {
    const idx_t j = std::min<idx_t>(i + B, N);
    for (idx_t k = i; k < j; ++k) {
      // Codebook of permuted column k and where its indices go.
      const bool is_outlier = k < os;
      const Codebook& cb = is_outlier ? *ctx.outlier : (*ctx.main)[static_cast<std::size_t>((k - os) / gs)];
      const int v = cb.v;
      const idx_t g = is_outlier ? 0 : (k - os) / gs;
      const idx_t c = is_outlier ? k : (k - os) % gs;
      const idx_t vec_end = std::min(r1, is_outlier ? R0 * v : R * v);
      const idx_t nv = std::max<idx_t>(0, (vec_end - r0) / v);
      const idx_t qrows = nv * v;

      float* wk = Wc.data() + k * rows;
      const float inv_sp = 1.0f / ctx.sp[k];
      for (idx_t r = 0; r < qrows; ++r) x[r] = wk[r] * inv_sp;

      cb.searcher->search(x.data(), nv, a.data(), nullptr);
      for (idx_t t = 0; t < nv; ++t) std::copy_n(cb.c + static_cast<idx_t>(a[t]) * v, v, q.data() + t * v);
      const Codebook* rcb = (!is_outlier && ctx.res && !ctx.res->empty())
                                ? &(*ctx.res)[static_cast<std::size_t>(g)]
                                : nullptr;
      if (rcb) {
        for (idx_t r = 0; r < qrows; ++r) resid[r] = x[r] - q[r];
        rcb->searcher->search(resid.data(), nv, b.data(), nullptr);
        for (idx_t t = 0; t < nv; ++t) {
          const float* rc = rcb->c + static_cast<idx_t>(b[t]) * v;
          for (int e = 0; e < v; ++e) q[t * v + e] += rc[e];
        }
      }

      // Store indices.
      const idx_t rb0 = r0 / v;
      for (idx_t t = 0; t < nv; ++t) {
        if (is_outlier) {
          out.outlier_indices[(rb0 + t) * os + c] = static_cast<std::uint16_t>(a[t]);
        } else {
          const idx_t pos = (g * R + rb0 + t) * gs + c;
          out.indices[pos] = static_cast<std::uint16_t>(a[t]);
          if (rcb) out.res_indices[pos] = static_cast<std::uint16_t>(b[t]);
        }
      }
      if (out.qerr) {
        float* qe = out.qerr + k * ctx.Mp + r0;
        for (idx_t r = 0; r < rows; ++r) qe[r] = r < real_rows ? x[r] - q[r] : 0.0f;
      }
      if (!ctx.feedback) continue;

      // Error feedback (padding rows carry no error).
      const float ukk = ctx.U[k * N + k];
      float* ek = E.data() + (k - i) * rows;
      const float sk = ctx.sp[k];
      for (idx_t r = 0; r < rows; ++r) ek[r] = r < real_rows ? (wk[r] - sk * q[r]) / ukk : 0.0f;
      const float* urow = ctx.U + k * N;
      for (idx_t t = k + 1; t < j; ++t) {
        const float u = urow[t];
        float* wt = Wc.data() + t * rows;
        for (idx_t r = 0; r < real_rows; ++r) wt[r] -= u * ek[r];
      }
    }
    if (ctx.feedback && j < N) {
      // Lazy update of all later columns: Wc[j:N] -= U[i:j, j:N]ᵀ · E[0:j-i].
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, static_cast<int>(N - j), static_cast<int>(rows),
                  static_cast<int>(j - i), -1.0f, ctx.U + i * N + j, static_cast<int>(N), E.data(),
                  static_cast<int>(rows), 1.0f, Wc.data() + j * rows, static_cast<int>(rows));
    }
  }
}

int gcd_int(int a, int b) { return b == 0 ? a : gcd_int(b, a % b); }

/// Gathers the vectors of permuted columns [c0, c1) (v rows each, zero-padded) from
/// a [N, Mp] column-major source, each column divided by div[p] (div nullable = 1),
/// with weights colw[p] * (real rows)/v.
void gather_vectors(const float* src, idx_t Mp, idx_t M, idx_t c0, idx_t c1, int v, const double* colw,
                    const float* div, std::vector<float>& data, std::vector<float>& weights) {
  const idx_t R = (M + v - 1) / v;
  const idx_t n = (c1 - c0) * R;
  data.assign(static_cast<std::size_t>(n * v), 0.0f);
  weights.assign(static_cast<std::size_t>(n), 0.0f);
  parallel_for(c1 - c0, [&](idx_t cc) {
    const idx_t p = c0 + cc;
    for (idx_t r = 0; r < R; ++r) {
      const idx_t vid = cc * R + r;
      const idx_t real = std::min<idx_t>(v, M - r * v);
      const float* in = src + p * Mp + r * v;
      float* out = data.data() + vid * v;
      if (div != nullptr) {
        for (idx_t e = 0; e < real; ++e) out[e] = in[e] / div[p];
      } else {
        std::copy_n(in, real, out);
      }
      weights[static_cast<std::size_t>(vid)] = static_cast<float>(colw[p] * static_cast<double>(real) / v);
    }
  }, static_cast<double>(n * v));
}

Codebook make_codebook(std::vector<float>& storage, const float* data, const float* weights, idx_t n, int v,
                       idx_t k, KMeansParams kp, std::uint64_t salt, std::vector<KMeansStats>& stats,
                       const char* what) {
  VPTQ_CHECK(k <= n, what, ": number of centroids (", k, ") exceeds the number of vectors to cluster (", n,
             "); use fewer centroids or a larger layer");
  storage.resize(static_cast<std::size_t>(k * v));
  kp.seed = kp.seed * 1000003ULL + salt;
  stats.push_back(weighted_kmeans(data, n, v, weights, k, kp, storage.data(), nullptr));
  Codebook cb;
  cb.v = v;
  cb.k = k;
  cb.c = storage.data();
  cb.searcher = std::make_unique<CodebookSearcher>(storage.data(), k, v);
  return cb;
}

}  // namespace

VQResult vptq_quantize(const float* W, idx_t M, idx_t N, const PreparedHessian& H, const VQParams& P) {
  VPTQ_CHECK(W != nullptr, "vptq_quantize: W is null");
  VQLayout L = make_layout(M, N, P.v, P.k1, P.k2, P.outlier_percent, P.v0, P.k0, P.group_num);
  VPTQ_CHECK(H.n == N, "Hessian is ", H.n, "x", H.n, " but the weight has ", N, " input columns");
  VPTQ_CHECK(static_cast<idx_t>(H.perm.size()) == N && static_cast<idx_t>(H.U.size()) == N * N &&
                 static_cast<idx_t>(H.diag.size()) == N,
             "prepared Hessian is incomplete");
  VPTQ_CHECK(P.block_size >= 1, "block_size must be >= 1, got ", P.block_size);
  VPTQ_CHECK(P.row_chunk >= 1, "row_chunk must be >= 1, got ", P.row_chunk);
  bool identity = true;
  for (idx_t p = 0; p < N; ++p) identity = identity && H.perm[static_cast<std::size_t>(p)] == p;
  VPTQ_CHECK(P.enable_perm || identity,
             "enable_perm is false but the Hessian was prepared with act-order (non-identity perm)");
  for (idx_t i = 0; i < M * N; ++i) VPTQ_CHECK(std::isfinite(W[i]), "W contains NaN or Inf");

  const idx_t os = L.outlier_size, gs = L.group_size, G = L.group_num;
  const idx_t R = L.num_indices(), R0 = L.num_outlier_indices();
  const idx_t Mp = std::max(R * L.v, R0 * L.v0);

  VQResult res;
  res.layout = L;

  // 1. Per-input-column min/max normalisation (original column order).
  std::vector<float> cmin(static_cast<std::size_t>(N), 0.0f), cmax(static_cast<std::size_t>(N), 0.0f);
  if (P.enable_norm) {
    parallel_for((N + 255) / 256, [&](idx_t blk) {
      const idx_t j0 = blk * 256, j1 = std::min(N, j0 + 256);
      for (idx_t j = j0; j < j1; ++j) cmin[j] = cmax[j] = W[j];
      for (idx_t i = 1; i < M; ++i)
        for (idx_t j = j0; j < j1; ++j) {
          cmin[j] = std::min(cmin[j], W[i * N + j]);
          cmax[j] = std::max(cmax[j], W[i * N + j]);
        }
    }, 2.0 * M * N);
    res.scale.resize(static_cast<std::size_t>(N));
    res.bias = cmin;
    for (idx_t j = 0; j < N; ++j) res.scale[j] = cmax[j] - cmin[j];
  }
  // Effective divisor: a constant column (scale 0) is stored with scale 0 and
  // reconstructs exactly from its bias; it is normalised with a tiny positive
  // scale so feedback into it stays finite.
  double mean_scale = 0.0;
  idx_t nonzero = 0;
  for (idx_t j = 0; P.enable_norm && j < N; ++j)
    if (res.scale[j] > 0) mean_scale += res.scale[j], ++nonzero;
  const float tiny = static_cast<float>(nonzero ? 1e-6 * mean_scale / nonzero : 1e-6);
  auto col_scale = [&](idx_t j) { return P.enable_norm ? (res.scale[j] > 0 ? res.scale[j] : tiny) : 1.0f; };

  // 2. Permuted, centred, transposed working copy Wt[p, i] (padding rows = 0).
  res.perm.assign(H.perm.begin(), H.perm.end());
  std::vector<float> sp(static_cast<std::size_t>(N));
  std::vector<double> colw(static_cast<std::size_t>(N));
  for (idx_t p = 0; p < N; ++p) {
    const idx_t j = H.perm[p];
    const double s = col_scale(j);
    sp[p] = P.norm_aware_hessian ? static_cast<float>(s) : 1.0f;
    colw[p] = H.dead[j] ? 0.0 : H.diag[j] * static_cast<double>(sp[p]) * sp[p];
  }
  std::vector<float> Wt(static_cast<std::size_t>(N * Mp), 0.0f);
  parallel_for((N + 63) / 64, [&](idx_t blk) {
    const idx_t p0 = blk * 64, p1 = std::min(N, p0 + 64);
    for (idx_t i = 0; i < M; ++i)
      for (idx_t p = p0; p < p1; ++p) {
        const idx_t j = H.perm[p];
        const float b = P.enable_norm ? res.bias[j] : 0.0f;
        const float wn = H.dead[j] ? 0.0f : (W[i * N + j] - b) / col_scale(j);
        Wt[p * Mp + i] = wn * sp[p];
      }
  }, 4.0 * M * N);

  // 3. Codebooks by Hessian-weighted k-means on the normalised weights.
  // k-means sees the normalised weights: the centred working copy divided by sp.
  std::vector<float> data, weights;
  const float* div = P.norm_aware_hessian ? sp.data() : nullptr;
  res.outlier_centroids.clear();
  Codebook outlier_cb;
  if (os > 0) {
    gather_vectors(Wt.data(), Mp, M, 0, os, L.v0, colw.data(), div, data, weights);
    outlier_cb = make_codebook(res.outlier_centroids, data.data(), weights.data(), os * R0, L.v0, L.k0, P.kmeans,
                               0, res.kmeans_stats, "outlier codebook");
  }
  res.centroids.resize(static_cast<std::size_t>(G * L.k1 * L.v));
  std::vector<std::vector<float>> main_store(static_cast<std::size_t>(G));
  std::vector<Codebook> main_cbs;
  for (idx_t g = 0; g < G; ++g) {
    gather_vectors(Wt.data(), Mp, M, os + g * gs, os + (g + 1) * gs, L.v, colw.data(), div, data, weights);
    main_cbs.push_back(make_codebook(main_store[g], data.data(), weights.data(), gs * R, L.v, L.k1, P.kmeans,
                                     1 + static_cast<std::uint64_t>(g), res.kmeans_stats, "main codebook"));
  }

  // 4. VPTQ pass(es) over fixed row chunks.
  const int lcm = L.v0 > 0 && os > 0 ? L.v / gcd_int(L.v, L.v0) * L.v0 : L.v;
  const idx_t chunk = ((P.row_chunk + lcm - 1) / lcm) * lcm;
  const idx_t nchunks = (Mp + chunk - 1) / chunk;
  res.indices.assign(static_cast<std::size_t>(G * R * gs), 0);
  if (os > 0) res.outlier_indices.assign(static_cast<std::size_t>(R0 * os), 0);

  PassContext ctx;
  ctx.L = &L;
  ctx.N = N;
  ctx.M = M;
  ctx.Mp = Mp;
  ctx.Wt = Wt.data();
  ctx.sp = sp.data();
  ctx.U = H.U.data();
  ctx.block = P.block_size;
  ctx.feedback = P.error_feedback;
  ctx.outlier = &outlier_cb;
  ctx.main = &main_cbs;

  auto run_pass = [&](const PassOutput& out) {
    set_blas_threads(1);
    // Per row: search all centroids of every column, plus the feedback updates.
    const double work = static_cast<double>(Mp) * N * (static_cast<double>(L.k1 + L.k2) + N);
    parallel_for_dynamic(
        nchunks, [&](idx_t ch) { run_pass_chunk(ctx, ch * chunk, std::min(Mp, (ch + 1) * chunk), out); }, work);
  };

  PassOutput out;
  out.indices = res.indices.data();
  out.outlier_indices = os > 0 ? res.outlier_indices.data() : nullptr;
  std::vector<Codebook> res_cbs;
  std::vector<std::vector<float>> res_store;
  if (L.k2 > 0) {
    // First pass with the main codebooks only, to learn the residual codebooks
    // on what it missed; then a full second pass from the original weights.
    std::vector<float> qerr(static_cast<std::size_t>(N * Mp), 0.0f);
    out.qerr = qerr.data();
    run_pass(out);
    out.qerr = nullptr;
    res_store.resize(static_cast<std::size_t>(G));
    for (idx_t g = 0; g < G; ++g) {
      gather_vectors(qerr.data(), Mp, M, os + g * gs, os + (g + 1) * gs, L.v, colw.data(), nullptr, data,
                     weights);
      res_cbs.push_back(make_codebook(res_store[g], data.data(), weights.data(), gs * R, L.v, L.k2, P.kmeans,
                                      1000 + static_cast<std::uint64_t>(g), res.kmeans_stats,
                                      "residual codebook"));
    }
    ctx.res = &res_cbs;
    res.res_indices.assign(static_cast<std::size_t>(G * R * gs), 0);
    out.res_indices = res.res_indices.data();
  }
  run_pass(out);

  for (idx_t g = 0; g < G; ++g)
    std::copy(main_store[g].begin(), main_store[g].end(), res.centroids.begin() + g * L.k1 * L.v);
  if (L.k2 > 0) {
    res.res_centroids.resize(static_cast<std::size_t>(G * L.k2 * L.v));
    for (idx_t g = 0; g < G; ++g)
      std::copy(res_store[g].begin(), res_store[g].end(), res.res_centroids.begin() + g * L.k2 * L.v);
  }
  if (!P.enable_perm) res.perm.clear();
  return res;
}

}  // namespace vptq
