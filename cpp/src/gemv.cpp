// GemvPlan: builds the kernel layout from a VQWeightsView and runs the fused
// y = x · Ŵᵀ + bias with the SIMD level chosen at run time. Also holds the
// scalar reference tile kernel (the specification of what the SIMD ones compute).
#include "vptq/gemv.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <utility>

#include <cblas.h>
#include <omp.h>

#include <memory>

#include "kernels/gemv_kernels.h"

namespace vptq {

const char* codebook_storage_name(CodebookStorage s) {
  switch (s) {
    case CodebookStorage::F32:
      return "f32";
    case CodebookStorage::F16:
      return "f16";
    case CodebookStorage::BF16:
      return "bf16";
  }
  return "unknown";
}

namespace detail {

float half_to_float(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t exp = (h >> 10) & 0x1fu;
  const std::uint32_t mant = h & 0x3ffu;
  std::uint32_t u;
  if (exp == 0) {
    if (mant == 0) {
      u = sign;
    } else {
      const float f = std::ldexp(static_cast<float>(mant), -24);
      std::memcpy(&u, &f, sizeof(u));
      u |= sign;
    }
  } else if (exp == 31) {
    u = sign | 0x7f800000u | (mant << 13);
  } else {
    u = sign | ((exp + 112u) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

std::uint16_t float_to_half_exact_or(float f, bool* exact) {
  std::uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  const std::uint16_t sign = static_cast<std::uint16_t>((u >> 16) & 0x8000u);
  const int exp8 = static_cast<int>((u >> 23) & 0xffu);
  const std::uint32_t mant = u & 0x7fffffu;
  std::uint16_t h = 0;
  bool ok = false;
  if (exp8 == 0) {
    ok = mant == 0;  // +-0 (float subnormals are far below the fp16 range)
    h = sign;
  } else if (exp8 != 255) {
    const int e = exp8 - 127;
    if (e >= -14 && e <= 15) {
      ok = (mant & 0x1fffu) == 0;
      h = static_cast<std::uint16_t>(sign | ((e + 15) << 10) | (mant >> 13));
    } else if (e >= -24 && e < -14) {
      const std::uint32_t full = mant | 0x800000u;
      const int shift = -(e + 1);  // value = full * 2^(e - 23) = m * 2^-24
      ok = shift < 32 && (full & ((1u << shift) - 1u)) == 0;
      h = static_cast<std::uint16_t>(sign | (full >> shift));
    }
  }
  if (ok) ok = half_to_float(h) == f;
  *exact = ok;
  return h;
}

namespace {

/// w[0, n) = the weight vector at main offset off, plus the residual entry at roff when
/// rcb is set: the entry sum is rounded to fp32 once, as in the dequantized matrix.
template <class Load>
void weight_vector(Load load, const void* cb, idx_t off, const void* rcb, idx_t roff, int n, float* w) {
  for (int l = 0; l < n; ++l) w[l] = rcb != nullptr ? load(cb, off + l) + load(rcb, roff + l) : load(cb, off + l);
}

/// One lookup of a sorted tile, decoded: section-local column (dummy_col for padding),
/// main and residual element offsets, tile-local row block.
struct SortedLookup {
  idx_t col, off, roff, blk;
};

/// Visits a sorted tile's lookups list by list, each list in column order:
/// f(lookup, first of its list, last of its list).
template <class F>
void for_each_sorted(const TileArgs& a, F f) {
  const idx_t rmult = a.premul ? 1 : a.vp;
  const auto G = static_cast<std::size_t>(a.G);
  for (idx_t q = 0; q < a.num_chunks; ++q)
    for (std::uint32_t g = a.gstart[q]; g < a.gstart[q + 1]; ++g)
      for (std::size_t l = 0; l < G; ++l) {
        const idx_t blk = a.gblk[g * G + l];
        for (std::uint32_t r = a.gfirst[g]; r < a.gfirst[g + 1]; ++r) {
          const std::size_t e = r * G + l;
          const std::uint32_t w = a.ent[e];
          const idx_t roff = a.rent != nullptr ? static_cast<idx_t>(a.rent[e]) * rmult : 0;
          f(SortedLookup{sorted_col(w), q * a.chunk_elems + sorted_off(w), roff, blk}, r == a.gfirst[g],
            r + 1 == a.gfirst[g + 1]);
        }
      }
}

/// Scalar form of the sorted kernels: per list, a partial sum (sequential in c) added
/// to the block's accumulator when the list ends (the order of the SIMD kernels).
template <class Load>
void sorted_scalar_body(const TileArgs& a, const float* xs, idx_t ldx, idx_t batch, float* acc, idx_t ld,
                        Load load) {
  const int v = a.v;
  for (idx_t b = 0; b < batch; ++b) {
    float part[16] = {};
    for_each_sorted(a, [&](const SortedLookup& k, bool first, bool last) {
      if (first)
        for (int i = 0; i < v; ++i) part[i] = 0.0f;
      const float x = xs[b * ldx + k.col];
      float wv[16];
      weight_vector(load, a.cb, k.off, a.rcb, k.roff, v, wv);
      for (int i = 0; i < v; ++i) part[i] += x * wv[i];
      if (last) {
        float* o = acc + b * ld + k.blk * v;
        for (int i = 0; i < v; ++i) o[i] += part[i];
      }
    });
  }
}

template <class Load>
void tile_scalar_body(const TileArgs& a, const float* xs, idx_t ldx, idx_t batch, float* acc, idx_t ld,
                      Load load) {
  if (a.sorted) {
    sorted_scalar_body(a, xs, ldx, batch, acc, ld, load);
    return;
  }
  const int v = a.v, vp = a.vp, rb = a.rb;
  const idx_t mult = a.premul ? 1 : vp;
  for (idx_t b = 0; b < batch; ++b) {
    float* out = acc + b * ld;
    const float* xr = xs + b * ldx;
    for (idx_t c = 0; c < a.cols; ++c) {
      const float x = xr[c];
      const std::uint16_t* ip = a.idx + c * rb;
      const std::uint16_t* rp = a.ridx != nullptr ? a.ridx + c * rb : nullptr;
      for (int r = 0; r < rb; ++r) {
        float wv[16];
        weight_vector(load, a.cb, static_cast<idx_t>(ip[r]) * mult, a.rcb,
                      rp != nullptr ? static_cast<idx_t>(rp[r]) * mult : 0, v, wv);
        float* o = out + r * v;
        for (int l = 0; l < v; ++l) o[l] += x * wv[l];
      }
    }
  }
}

float load_f32(const void* p, idx_t i) { return static_cast<const float*>(p)[i]; }
float load_f16(const void* p, idx_t i) { return half_to_float(static_cast<const std::uint16_t*>(p)[i]); }
float load_bf16(const void* p, idx_t i) { return bf16_to_float(static_cast<const std::uint16_t*>(p)[i]); }
using LoadFn = float (*)(const void*, idx_t);
LoadFn loader(CodebookStorage s) {
  return s == CodebookStorage::F16 ? load_f16 : s == CodebookStorage::BF16 ? load_bf16 : load_f32;
}

idx_t lcm(idx_t a, idx_t b) { return a / std::gcd(a, b) * b; }

/// Chooses the storage of a section's codebooks (main + residual together).
CodebookStorage choose_storage(const float* cb, idx_t n, const float* rcb, idx_t rn, std::size_t padded_bytes,
                               const GemvOptions& opt) {
  if (!opt.allow_compact_codebooks || padded_bytes <= opt.compact_codebook_bytes) return CodebookStorage::F32;
  bool f16 = true, bf16 = true;
  auto scan = [&](const float* p, idx_t m) {
    for (idx_t i = 0; i < m && (f16 || bf16); ++i) {
      bool ex = false;
      if (f16) {
        float_to_half_exact_or(p[i], &ex);
        f16 = ex;
      }
      if (bf16) {
        std::uint32_t u;
        std::memcpy(&u, &p[i], sizeof(u));
        bf16 = (u & 0xffffu) == 0;
      }
    }
  };
  scan(cb, n);
  if (rcb != nullptr) scan(rcb, rn);
  if (f16) return CodebookStorage::F16;
  if (bf16) return CodebookStorage::BF16;
  return CodebookStorage::F32;
}

/// Widens/pads a [k, v] codebook into [k, vp] storage.
void widen_codebook(const float* src, idx_t k, int v, int vp, CodebookStorage st, aligned_vector<float>* f32,
                    aligned_vector<std::uint16_t>* h16) {
  const std::size_t n = static_cast<std::size_t>(k) * static_cast<std::size_t>(vp);
  if (st == CodebookStorage::F32) {
    f32->assign(n, 0.0f);
    for (idx_t i = 0; i < k; ++i)
      for (int l = 0; l < v; ++l) (*f32)[static_cast<std::size_t>(i * vp + l)] = src[i * v + l];
  } else {
    h16->assign(n, 0);
    for (idx_t i = 0; i < k; ++i)
      for (int l = 0; l < v; ++l) {
        const float f = src[i * v + l];
        std::uint16_t h;
        if (st == CodebookStorage::F16) {
          bool ex = false;
          h = float_to_half_exact_or(f, &ex);
        } else {
          std::uint32_t u;
          std::memcpy(&u, &f, sizeof(u));
          h = static_cast<std::uint16_t>(u >> 16);
        }
        (*h16)[static_cast<std::size_t>(i * vp + l)] = h;
      }
  }
}

/// Re-tiles src [num_blocks, cols] (row stride cols) into [num_tiles, cols, rb], times mult.
void tile_indices(const std::uint16_t* src, idx_t num_blocks, idx_t cols, int rb, idx_t num_tiles, int mult,
                  std::vector<std::uint16_t>* dst) {
  dst->assign(static_cast<std::size_t>(num_tiles * cols * rb), 0);
  for (idx_t t = 0; t < num_tiles; ++t)
    for (int r = 0; r < rb; ++r) {
      const idx_t blk = t * rb + r;
      if (blk >= num_blocks) break;
      const std::uint16_t* s = src + blk * cols;
      std::uint16_t* d = dst->data() + t * cols * rb + r;
      for (idx_t c = 0; c < cols; ++c) d[c * rb] = static_cast<std::uint16_t>(s[c] * mult);
    }
}

/// Builds s->sl from src [num_blocks, cols] indices (see SortedLayout). s: v, vp, rb,
/// cols, num_blocks, num_tiles, k, kr, storage, premul already set; dummy: zero column.
void build_sorted(GemvSection* s, const std::uint16_t* idx, const std::uint16_t* ridx, std::uint16_t dummy,
                  const GemvOptions& opt) {
  SortedLayout& L = s->sl;
  const idx_t eb = s->storage == CodebookStorage::F32 ? 4 : 2;
  idx_t E = 1;
  while (2 * E * s->vp * eb <= static_cast<idx_t>(opt.sorted_chunk_bytes) && 2 * E * s->vp <= 65536) E *= 2;
  L.G = s->vp == 8 ? 8 : 4;
  L.chunk_entries = E;
  L.num_chunks = (s->k + E - 1) / E;
  L.dummy_col = dummy;
  const idx_t G = L.G, TB = s->rb, Q = L.num_chunks, cols = s->cols;
  const bool res = ridx != nullptr;
  const idx_t rmult = s->premul ? s->vp : 1;
  std::vector<idx_t> cnt(static_cast<std::size_t>(Q * TB)), pos(cnt.size() + 1);
  std::vector<std::uint32_t> te(static_cast<std::size_t>(TB * cols));
  std::vector<std::uint16_t> tr(res ? te.size() : 0);
  std::vector<idx_t> order(static_cast<std::size_t>(TB));
  L.gfirst.push_back(0);
  for (idx_t t = 0; t < s->num_tiles; ++t) {
    const idx_t b0 = t * TB, nb = std::min(TB, s->num_blocks - b0);
    // bucket the tile's lookups by (chunk, block), columns ascending within a bucket
    std::fill(cnt.begin(), cnt.end(), 0);
    for (idx_t b = 0; b < nb; ++b)
      for (idx_t c = 0; c < cols; ++c) ++cnt[static_cast<std::size_t>(idx[(b0 + b) * cols + c] / E * TB + b)];
    pos[0] = 0;
    for (std::size_t i = 0; i < cnt.size(); ++i) pos[i + 1] = pos[i] + cnt[i];
    std::vector<idx_t> fill(pos.begin(), pos.end() - 1);
    for (idx_t b = 0; b < nb; ++b)
      for (idx_t c = 0; c < cols; ++c) {
        const idx_t i = idx[(b0 + b) * cols + c];
        const std::size_t at = static_cast<std::size_t>(fill[static_cast<std::size_t>(i / E * TB + b)]++);
        te[at] = sorted_word(static_cast<std::uint32_t>(c), static_cast<std::uint32_t>((i % E) * s->vp));
        if (res) tr[at] = static_cast<std::uint16_t>(ridx[(b0 + b) * cols + c] * rmult);
      }
    for (idx_t q = 0; q < Q; ++q) {
      L.gstart.push_back(static_cast<std::uint32_t>(L.gfirst.size() - 1));
      const idx_t* len = cnt.data() + q * TB;
      std::iota(order.begin(), order.end(), 0);
      // longest first: lists of similar length share a group (little padding)
      std::stable_sort(order.begin(), order.begin() + nb, [&](idx_t a, idx_t b) { return len[a] > len[b]; });
      for (idx_t g0 = 0; g0 < nb && len[order[static_cast<std::size_t>(g0)]] > 0; g0 += G) {
        const idx_t rounds = len[order[static_cast<std::size_t>(g0)]];
        for (idx_t l = 0; l < G; ++l) {
          // a slot without a list repeats the group's first block with dummy entries only
          const idx_t b = g0 + l < nb ? order[static_cast<std::size_t>(g0 + l)] : order[static_cast<std::size_t>(g0)];
          L.gblk.push_back(static_cast<std::uint16_t>(b));
        }
        for (idx_t r = 0; r < rounds; ++r)
          for (idx_t l = 0; l < G; ++l) {
            const idx_t b = g0 + l < nb ? order[static_cast<std::size_t>(g0 + l)] : -1;
            const bool real = b >= 0 && r < len[b];
            const std::size_t at = real ? static_cast<std::size_t>(pos[static_cast<std::size_t>(q * TB + b)] + r) : 0;
            L.ent.push_back(real ? te[at] : dummy);
            if (res) L.rent.push_back(real ? tr[at] : 0);
          }
        L.gfirst.push_back(static_cast<std::uint32_t>(L.gfirst.back() + rounds));
      }
    }
  }
  L.gstart.push_back(static_cast<std::uint32_t>(L.gfirst.size() - 1));
}

GemvSection make_section(int v, idx_t M, idx_t N, idx_t col_begin, idx_t cols, idx_t k, idx_t kr, const float* cb,
                         const float* rcb, const std::uint16_t* idx, const std::uint16_t* ridx,
                         const GemvOptions& opt) {
  GemvSection s;
  s.v = v;
  s.vp = v <= 8 ? 8 : 16;
  s.rb = v <= 8 ? 8 : 4;
  s.col_begin = col_begin;
  s.cols = cols;
  s.num_blocks = (M + v - 1) / v;
  s.num_tiles = (s.num_blocks + s.rb - 1) / s.rb;
  s.k = k;
  s.kr = kr;
  const std::size_t padded = static_cast<std::size_t>(k + kr) * static_cast<std::size_t>(s.vp) * sizeof(float);
  s.storage = choose_storage(cb, k * v, rcb, kr * v, padded, opt);
  widen_codebook(cb, k, v, s.vp, s.storage, &s.cb32, &s.cb16);
  if (kr > 0) widen_codebook(rcb, kr, v, s.vp, s.storage, &s.rcb32, &s.rcb16);
  s.premul = std::max(k, kr) * s.vp <= 65536;
  // Buffered batches (kernels/gemv_tile_inl.h) where lookups are expensive: fp16/bf16
  // codebooks with a residual (two conversions and an add per entry), from 4 rows when
  // the codebooks are far beyond L2 (k = 65536: v16-k65536-65536 at batch 4 measured
  // 8.8 vs 14 ms, Zen 3, one thread), else from 8 rows (v12-k4096-4096 at 16: 15 vs 18
  // ms; at 4 the direct kernel's 2 passes were faster). Cheap lookups (fp32 codebooks,
  // no residual) keep the direct kernel: it is FMA-bound from batch 4 on.
  if (s.storage != CodebookStorage::F32 && kr > 0) s.buf_min_batch = std::max(k, kr) > 4096 ? 4 : 8;
  const std::size_t eb = s.storage == CodebookStorage::F32 ? sizeof(float) : sizeof(std::uint16_t);
  const std::size_t main_bytes = static_cast<std::size_t>(k * s.vp) * eb;
  const std::size_t res_bytes = static_cast<std::size_t>(kr * s.vp) * eb;
  // Sorted layout (see GemvOptions::sorted_min_codebook_bytes); its entries store
  // 16-bit columns (the zero slot at column N included) and 16-bit chunk offsets.
  if (opt.sorted_min_codebook_bytes > 0 && main_bytes > opt.sorted_min_codebook_bytes &&
      res_bytes <= opt.sorted_max_residual_bytes && N - col_begin <= 65535 && opt.sorted_tile_blocks > 0) {
    s.sorted = true;
    s.buf_min_batch = 0;
    s.premul = kr * s.vp <= 65536;  // the residual's indices; main ones are chunk offsets
    const idx_t quarter = ((s.num_blocks + 3) / 4 + 7) / 8 * 8;  // a multiple of 8 (BLAS sub-tiles)
    s.rb = static_cast<int>(std::min<idx_t>({opt.sorted_tile_blocks, std::max<idx_t>(64, quarter), 65535}));
    s.num_tiles = (s.num_blocks + s.rb - 1) / s.rb;
    build_sorted(&s, idx, ridx, static_cast<std::uint16_t>(N - col_begin), opt);
    return s;
  }
  const int mult = s.premul ? s.vp : 1;
  tile_indices(idx, s.num_blocks, cols, s.rb, s.num_tiles, mult, &s.idx);
  if (kr > 0) tile_indices(ridx, s.num_blocks, cols, s.rb, s.num_tiles, mult, &s.ridx);
  return s;
}

TileArgs tile_args(const GemvSection& s, idx_t tile) {
  TileArgs a;
  a.v = s.v;
  a.vp = s.vp;
  a.rb = s.rb;
  a.cols = s.cols;
  a.storage = s.storage;
  a.premul = s.premul;
  a.buf_min_batch = s.buf_min_batch;
  a.cb = s.cb();
  a.rcb = s.rcb();
  a.k = s.k;
  a.kr = s.kr;
  if (!s.sorted) {
    a.idx = s.idx.data() + tile * s.cols * s.rb;
    a.ridx = s.kr > 0 ? s.ridx.data() + tile * s.cols * s.rb : nullptr;
  } else {
    a.sorted = true;
    a.G = s.sl.G;
    a.num_chunks = s.sl.num_chunks;
    a.chunk_elems = s.sl.chunk_entries * s.vp;
    a.dummy_col = s.sl.dummy_col;
    a.gstart = s.sl.gstart.data() + tile * s.sl.num_chunks;
    a.gfirst = s.sl.gfirst.data();
    a.gblk = s.sl.gblk.data();
    a.ent = s.sl.ent.data();
    a.rent = s.kr > 0 ? s.sl.rent.data() : nullptr;
  }
  return a;
}

template <class Load>
void dequant_t_body(const TileArgs& a, float* qt, idx_t ldq, Load load) {
  const idx_t mult = a.premul ? 1 : a.vp;
  if (a.sorted) {
    for_each_sorted(a, [&](const SortedLookup& k, bool, bool) {
      if (k.col == a.dummy_col || k.blk < a.blk_lo || k.blk >= a.blk_hi) return;
      weight_vector(load, a.cb, k.off, a.rcb, k.roff, a.v, qt + k.col * ldq + (k.blk - a.blk_lo) * a.v);
    });
    return;
  }
  for (idx_t c = 0; c < a.cols; ++c)
    for (int r = 0; r < a.rb; ++r) {
      const std::size_t pos = static_cast<std::size_t>(c * a.rb + r);
      weight_vector(load, a.cb, static_cast<idx_t>(a.idx[pos]) * mult, a.rcb,
                    a.ridx != nullptr ? static_cast<idx_t>(a.ridx[pos]) * mult : 0, a.v, qt + c * ldq + r * a.v);
    }
}

DequantTKernel pick_dequant_t(SimdLevel level) {
  switch (level) {
#if defined(__x86_64__) || defined(__i386__)
    case SimdLevel::AVX512:
      return &dequant_t_avx512;
    case SimdLevel::AVX2:
      return &dequant_t_avx2;
#endif
    default:
      return &dequant_t_scalar;
  }
}

HistKernel pick_hist(SimdLevel level) {
  switch (level) {
#if defined(__x86_64__) || defined(__i386__)
    case SimdLevel::AVX512:
      return &gemv_hist_avx512;
    case SimdLevel::AVX2:
      return &gemv_hist_avx2;
#endif
    default:
      return nullptr;
  }
}

bool hist_eligible(const GemvSection& s) {
  return !s.sorted && s.vp == 8 && s.storage == CodebookStorage::F32 && s.k <= kHistMaxK && s.kr <= kHistMaxK;
}

TileKernel pick_kernel(SimdLevel level) {
  switch (level) {
#if defined(__x86_64__) || defined(__i386__)
    case SimdLevel::AVX512:
      return &gemv_tile_avx512;
    case SimdLevel::AVX2:
      return &gemv_tile_avx2;
#endif
    default:
      return &gemv_tile_scalar;
  }
}

}  // namespace

void dequant_t_scalar(const TileArgs& a, float* qt, idx_t ldq) {
  switch (a.storage) {
    case CodebookStorage::F32:
      dequant_t_body(a, qt, ldq, load_f32);
      break;
    case CodebookStorage::F16:
      dequant_t_body(a, qt, ldq, load_f16);
      break;
    case CodebookStorage::BF16:
      dequant_t_body(a, qt, ldq, load_bf16);
      break;
  }
}

void gemv_tile_scalar(const TileArgs& a, const float* xs, idx_t ldx, idx_t batch, float* acc, idx_t ld) {
  switch (a.storage) {
    case CodebookStorage::F32:
      tile_scalar_body(a, xs, ldx, batch, acc, ld, load_f32);
      break;
    case CodebookStorage::F16:
      tile_scalar_body(a, xs, ldx, batch, acc, ld, load_f16);
      break;
    case CodebookStorage::BF16:
      tile_scalar_body(a, xs, ldx, batch, acc, ld, load_bf16);
      break;
  }
}

}  // namespace detail

GemvPlan::GemvPlan(const VQWeightsView& w, const float* layer_bias, const GemvOptions& opt) {
  check_weights(w);
  const VQLayout& L = w.layout;
  layout_ = L;
  opt_ = opt;
  M_ = L.M;
  N_ = L.N;
  VPTQ_CHECK(L.outlier_size == 0 || L.k0 > 0, "GemvPlan: outlier_size ", L.outlier_size,
             " > 0 requires an outlier codebook (k0 > 0), got k0 = ", L.k0);
  VPTQ_CHECK(L.outlier_size + static_cast<idx_t>(L.group_num) * L.group_size == L.N,
             "GemvPlan: expected outlier_size + group_num * group_size == N = ", L.N, ", got ",
             L.outlier_size, " + ", L.group_num, " * ", L.group_size);

  perm_.resize(static_cast<std::size_t>(N_));
  for (idx_t p = 0; p < N_; ++p) perm_[static_cast<std::size_t>(p)] = w.perm != nullptr ? w.perm[p] : p;
  scale_.assign(static_cast<std::size_t>(N_), 1.0f);
  if (w.scale != nullptr) std::copy(w.scale, w.scale + N_, scale_.begin());
  if (w.bias != nullptr) nbias_.assign(w.bias, w.bias + N_);
  if (layer_bias != nullptr) lbias_.assign(layer_bias, layer_bias + M_);

  if (L.outlier_size > 0) {
    sections_.push_back(detail::make_section(L.v0, M_, N_, 0, L.outlier_size, L.k0, 0, w.outlier_centroids, nullptr,
                                             w.outlier_indices, nullptr, opt));
  }
  const idx_t nb = L.num_indices();
  for (int g = 0; g < L.group_num; ++g) {
    const idx_t off = static_cast<idx_t>(g) * nb * L.group_size;
    sections_.push_back(detail::make_section(
        L.v, M_, N_, L.outlier_size + g * L.group_size, L.group_size, L.k1, L.k2, w.centroids + g * L.k1 * L.v,
        L.k2 > 0 ? w.res_centroids + g * L.k2 * L.v : nullptr, w.indices + off,
        L.k2 > 0 ? w.res_indices + off : nullptr, opt));
  }
  if (opt_.blas_min_batch < 0) {
    bool costly = false;  // residual lookups that the histogram form cannot take
    for (const auto& s : sections_) costly = costly || (s.kr > 0 && !detail::hist_eligible(s));
    opt_.blas_min_batch = costly ? 48 : 64;
  }
  idx_t tr = 1;
  for (const auto& s : sections_) tr = detail::lcm(tr, s.tile_rows());
  task_rows_ = tr * std::max<idx_t>(1, (128 + tr - 1) / tr);
  num_tasks_ = (M_ + task_rows_ - 1) / task_rows_;
  // BLAS row sub-tiles: whole direct tiles and whole groups of 8 blocks of sorted ones,
  // up to 128 rows (or more where the tiles' common multiple is larger).
  idx_t sub = 1;
  for (const auto& s : sections_) sub = detail::lcm(sub, s.sorted ? 8 * s.v : s.tile_rows());
  while (sub * 2 <= 128 && task_rows_ % (sub * 2) == 0) sub *= 2;
  blas_rows_ = sub;
}

GemvPlan::~GemvPlan() = default;
GemvPlan::GemvPlan(GemvPlan&&) noexcept = default;
GemvPlan& GemvPlan::operator=(GemvPlan&&) noexcept = default;

void GemvPlan::prescale(const float* x, idx_t batch, float* xs, float* xb) const {
  const idx_t ldx = N_ + 1;
  for (idx_t b = 0; b < batch; ++b) {
    const float* xr = x + b * N_;
    float* o = xs + b * ldx;
    for (idx_t p = 0; p < N_; ++p) {
      const idx_t j = perm_[static_cast<std::size_t>(p)];
      o[p] = xr[j] * scale_[static_cast<std::size_t>(j)];
    }
    o[N_] = 0.0f;  // the zero slot that padding entries of sorted sections read
    double s = 0.0;
    if (!nbias_.empty())
      for (idx_t j = 0; j < N_; ++j) s += static_cast<double>(xr[j]) * nbias_[static_cast<std::size_t>(j)];
    xb[b] = static_cast<float>(s);
  }
}

void GemvPlan::forward(const float* x, idx_t batch, float* y) const { forward(x, batch, y, get_simd_level()); }

void GemvPlan::forward(const float* x, idx_t batch, float* y, SimdLevel level) const {
  VPTQ_CHECK(batch >= 1, "GemvPlan::forward: expected batch >= 1, got ", batch);
  VPTQ_CHECK(x != nullptr && y != nullptr, "GemvPlan::forward: x and y must not be null");
  VPTQ_CHECK(simd_level_supported(level), "GemvPlan::forward: SIMD level ", simd_level_name(level),
             " is not supported on this CPU");
  if (opt_.blas_min_batch > 0 && batch >= opt_.blas_min_batch) {
    forward_blas(x, batch, y, level);
    return;
  }
  const detail::TileKernel kern = detail::pick_kernel(level);
  const idx_t ldx = N_ + 1;
  std::vector<float> xs(static_cast<std::size_t>(batch * ldx));  // [batch, N + 1] permuted, scaled, 0
  std::vector<float> xb(static_cast<std::size_t>(batch));       // [batch] Σ x·bias
  prescale(x, batch, xs.data(), xb.data());
  const idx_t ld = task_rows_ + 16;

  // Histogram form: transposed activations per chunk of kHistChunk batch rows.
  const detail::HistKernel hist =
      opt_.hist_min_batch > 0 && batch >= opt_.hist_min_batch ? detail::pick_hist(level) : nullptr;
  idx_t hist_k = 0;
  if (hist != nullptr)
    for (const auto& s : sections_)
      if (detail::hist_eligible(s)) hist_k = std::max(hist_k, std::max(s.k, s.kr));
  const idx_t nchunks = hist_k > 0 ? (batch + detail::kHistChunk - 1) / detail::kHistChunk : 0;
  std::vector<std::vector<float>> xst(static_cast<std::size_t>(nchunks));  // per chunk [N, width]
  std::vector<idx_t> xst_w(static_cast<std::size_t>(nchunks));
  for (idx_t q = 0; q < nchunks; ++q) {
    const idx_t b0 = q * detail::kHistChunk;
    const idx_t nb = std::min<idx_t>(detail::kHistChunk, batch - b0);
    const idx_t w = (nb + 7) / 8 * 8;
    xst_w[static_cast<std::size_t>(q)] = w;
    auto& t = xst[static_cast<std::size_t>(q)];
    t.assign(static_cast<std::size_t>(N_ * w), 0.0f);
    for (idx_t b = 0; b < nb; ++b)
      for (idx_t p = 0; p < N_; ++p) t[static_cast<std::size_t>(p * w + b)] = xs[static_cast<std::size_t>((b0 + b) * ldx + p)];
  }

  auto task = [&](idx_t t) {
    std::vector<float> acc(static_cast<std::size_t>(batch * ld), 0.0f);  // [batch, ld]
    std::vector<float> scratch(static_cast<std::size_t>(2 * hist_k * detail::kHistChunk));  // [2, k, chunk]
    const idx_t row0 = t * task_rows_;
    for (const auto& s : sections_) {
      const idx_t th = s.tile_rows();
      const idx_t first = row0 / th;
      const idx_t last = std::min(s.num_tiles, first + task_rows_ / th);
      const bool use_hist = hist_k > 0 && detail::hist_eligible(s);
      for (idx_t tt = first; tt < last; ++tt) {
        const detail::TileArgs a = detail::tile_args(s, tt);
        float* at = acc.data() + (tt * th - row0);
        if (use_hist) {
          for (idx_t q = 0; q < nchunks; ++q) {
            const idx_t b0 = q * detail::kHistChunk;
            const idx_t w = xst_w[static_cast<std::size_t>(q)];
            hist(a, xst[static_cast<std::size_t>(q)].data() + s.col_begin * w, w,
                 std::min<idx_t>(detail::kHistChunk, batch - b0), at + b0 * ld, ld, scratch.data());
          }
        } else {
          kern(a, xs.data() + s.col_begin, ldx, batch, at, ld);
        }
      }
    }
    const idx_t rows = std::min(task_rows_, M_ - row0);
    for (idx_t b = 0; b < batch; ++b) {
      const float* ar = acc.data() + b * ld;
      float* yr = y + b * M_ + row0;
      const float xbb = xb[static_cast<std::size_t>(b)];
      if (lbias_.empty()) {
        for (idx_t i = 0; i < rows; ++i) yr[i] = ar[i] + xbb;
      } else {
        const float* lb = lbias_.data() + row0;
        for (idx_t i = 0; i < rows; ++i) yr[i] = (ar[i] + xbb) + lb[i];
      }
    }
  };
  // Small problems run on the calling thread: waking an OpenMP team costs more than
  // it saves below ~2M multiply-adds (~0.1-0.2 ms of lookups), and far more when the
  // other cores are busy (e.g. torch's own spinning OpenMP workers in a decode loop:
  // a 576x576 layer measured 0.08 ms on one thread, 0.3-3 ms on two). Results do
  // not depend on this choice.
  if (M_ * N_ * batch < (idx_t{1} << 21)) {
    for (idx_t t = 0; t < num_tasks_; ++t) task(t);
  } else {
    parallel_for(num_tasks_, task);
  }
}

void GemvPlan::dequantize_task(idx_t t, float* out) const {
  const idx_t row0 = t * task_rows_;
  for (const auto& s : sections_) {
    const idx_t mult = s.premul ? 1 : s.vp;
    const detail::LoadFn load = detail::loader(s.storage);
    // Column c's weight vector (nl of its v rows) scaled and biased into rows o[l * N_].
    auto put = [&](float* o, int nl, idx_t c, idx_t off, idx_t roff) {
      float wv[16];
      detail::weight_vector(load, s.cb(), off, s.rcb(), roff, nl, wv);
      const idx_t j = perm_[static_cast<std::size_t>(s.col_begin + c)];
      const float sc = scale_[static_cast<std::size_t>(j)];
      const float bi = nbias_.empty() ? 0.0f : nbias_[static_cast<std::size_t>(j)];
      for (int l = 0; l < nl; ++l) o[l * N_ + j] = wv[l] * sc + bi;
    };
    const idx_t th = s.tile_rows();
    const idx_t first = row0 / th;
    const idx_t last = std::min(s.num_tiles, first + task_rows_ / th);
    if (s.sorted) {
      for (idx_t tt = first; tt < last; ++tt) {
        const detail::TileArgs a = detail::tile_args(s, tt);
        detail::for_each_sorted(a, [&](const detail::SortedLookup& k, bool, bool) {
          if (k.col == a.dummy_col) return;
          const idx_t rstart = (tt * s.rb + k.blk) * s.v;
          put(out + (rstart - row0) * N_, static_cast<int>(std::min<idx_t>(s.v, M_ - rstart)), k.col, k.off, k.roff);
        });
      }
      continue;
    }
    for (idx_t tt = first; tt < last; ++tt)
      for (int r = 0; r < s.rb; ++r) {
        // one row block (v rows x N floats) at a time keeps the written rows in cache
        const idx_t rstart = (tt * s.rb + r) * s.v;
        if (rstart >= M_) break;
        const int nl = static_cast<int>(std::min<idx_t>(s.v, M_ - rstart));
        float* o = out + (rstart - row0) * N_;
        for (idx_t c = 0; c < s.cols; ++c) {
          const std::size_t pos = static_cast<std::size_t>((tt * s.cols + c) * s.rb + r);
          put(o, nl, c, static_cast<idx_t>(s.idx[pos]) * mult, s.kr > 0 ? static_cast<idx_t>(s.ridx[pos]) * mult : 0);
        }
      }
  }
}

void GemvPlan::dequantize(float* out) const {
  VPTQ_CHECK(out != nullptr, "GemvPlan::dequantize: out must not be null");
  parallel_for(num_tasks_, [&](idx_t t) { dequantize_task(t, out + t * task_rows_ * N_); });
}

void GemvPlan::forward_blas(const float* x, idx_t batch, float* y, SimdLevel level) const {
  const detail::DequantTKernel deq = detail::pick_dequant_t(level);
  const idx_t ldx = N_ + 1;
  std::vector<float> xs(static_cast<std::size_t>(batch * ldx));  // [batch, N + 1] permuted, scaled
  std::vector<float> xb(static_cast<std::size_t>(batch));       // [batch] Σ x·bias
  prescale(x, batch, xs.data(), xb.data());
  // Row sub-tiles of blas_rows_ rows: a tile of qt [N, blas_rows] stays small (a sorted
  // tile spans up to 2048 rows; as one qt its columns would be pages apart and every
  // scattered write a TLB miss: v8-k65536-0, 4096², 32 rows measured 82 vs 30 ms).
  const idx_t ldq = blas_rows_;
  // One uninitialised Qᵀ tile buffer [N, blas_rows] per thread, reused across tasks.
  const int nt = get_num_threads();
  const std::size_t qt_size = static_cast<std::size_t>(N_ * ldq + 16);
  std::unique_ptr<float[]> qt_all(new float[qt_size * static_cast<std::size_t>(nt)]);
  set_blas_threads(1);
  parallel_for(num_tasks_, [&](idx_t t) {
    const int tid = std::min(omp_get_thread_num(), nt - 1);
    float* qt = qt_all.get() + qt_size * static_cast<std::size_t>(tid);
    for (idx_t row0 = t * task_rows_; row0 < std::min(M_, (t + 1) * task_rows_); row0 += ldq) {
      const idx_t rows = std::min(ldq, M_ - row0);
      for (const auto& s : sections_) {
        const idx_t th = s.tile_rows();
        if (s.sorted) {  // the blocks of each overlapping tile (sub-tiles start at multiples of 8 v rows)
          for (idx_t tt = row0 / th; tt < s.num_tiles && tt * th < row0 + ldq; ++tt) {
            detail::TileArgs a = detail::tile_args(s, tt);
            const idx_t lo = std::max(row0, tt * th), hi = std::min(row0 + ldq, (tt + 1) * th);
            a.blk_lo = (lo - tt * th) / s.v;
            a.blk_hi = (hi - tt * th) / s.v;
            deq(a, qt + s.col_begin * ldq + (lo - row0), ldq);
          }
          continue;
        }
        const idx_t first = row0 / th;
        const idx_t last = std::min(s.num_tiles, first + ldq / th);
        for (idx_t tt = first; tt < last; ++tt)
          deq(detail::tile_args(s, tt), qt + s.col_begin * ldq + (tt * th - row0), ldq);
      }
      float* yt = y + row0;
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<int>(batch), static_cast<int>(rows),
                  static_cast<int>(N_), 1.0f, xs.data(), static_cast<int>(ldx), qt, static_cast<int>(ldq), 0.0f,
                  yt, static_cast<int>(M_));
      for (idx_t b = 0; b < batch; ++b) {
        float* yr = yt + b * M_;
        const float xbb = xb[static_cast<std::size_t>(b)];
        if (lbias_.empty()) {
          for (idx_t i = 0; i < rows; ++i) yr[i] += xbb;
        } else {
          for (idx_t i = 0; i < rows; ++i) yr[i] = (yr[i] + xbb) + lbias_[static_cast<std::size_t>(row0 + i)];
        }
      }
    }
  });
  set_blas_threads(get_num_threads());
}

std::size_t GemvPlan::kernel_bytes() const {
  std::size_t n = 0;
  for (const auto& s : sections_) {
    n += (s.idx.size() + s.ridx.size() + s.sl.rent.size() + s.sl.gblk.size()) * sizeof(std::uint16_t);
    n += (s.sl.ent.size() + s.sl.gstart.size() + s.sl.gfirst.size()) * sizeof(std::uint32_t);
    n += (s.cb32.size() + s.rcb32.size()) * sizeof(float) + (s.cb16.size() + s.rcb16.size()) * sizeof(std::uint16_t);
  }
  return n;
}

std::size_t GemvPlan::memory_bytes() const {
  return kernel_bytes() + perm_.size() * sizeof(idx_t) + (scale_.size() + nbias_.size() + lbias_.size()) * sizeof(float) +
         sections_.size() * sizeof(detail::GemvSection);
}

int GemvPlan::sorted_sections() const {
  return static_cast<int>(std::count_if(sections_.begin(), sections_.end(), [](const auto& s) { return s.sorted; }));
}

std::string GemvPlan::codebook_storage() const {
  if (sections_.empty()) return "f32";
  return codebook_storage_name(sections_.back().storage);
}

}  // namespace vptq
