// VQ weight layout, packed index bitstream and the scalar reference
// dequantization (design note §3.2-§3.4, §6.2-§6.4, §6.10, §6.14).
#include "vptq/format.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace vptq {

namespace {

constexpr idx_t kMaxCentroids = 65536;  // indices are uint16
constexpr idx_t kMaxColumns = 65536;    // perm is stored as uint16 bits
constexpr int kMinVecLen = 2;
constexpr int kMaxVecLen = 16;
// Original columns handled by one task of dequantize().
constexpr idx_t kDequantColBlock = 64;

bool is_pow2_in_range(idx_t k) { return k >= 2 && k <= kMaxCentroids && (k & (k - 1)) == 0; }

int log2_exact(idx_t k) {
  int b = 0;
  while ((idx_t{1} << b) < k) ++b;
  return b;
}

void check_vec_len(const char* name, int v) {
  VPTQ_CHECK(v >= kMinVecLen && v <= kMaxVecLen, name, " (vector length) must be in [", kMinVecLen, ", ",
             kMaxVecLen, "], got ", v);
}

void check_num_centroids(const char* name, idx_t k, bool optional) {
  if (optional && k == 0) return;
  VPTQ_CHECK(is_pow2_in_range(k), name, " must be ", optional ? "0 (disabled) or " : "",
             "a power of two in [2, 65536], got ", k);
}

void check_bits(int b1, int b2) {
  VPTQ_CHECK(b1 >= 1 && b1 <= 16, "index bits b1 must be in [1, 16], got ", b1);
  VPTQ_CHECK(b2 >= 0 && b2 <= 16, "residual index bits b2 must be in [0, 16], got ", b2);
}

idx_t words_per_row(idx_t cols, int total_bits) { return (cols * total_bits + 31) / 32; }

/// Index of the first entry of a[0, n) that is >= bound, or -1.
idx_t first_out_of_range(const std::uint16_t* a, idx_t n, idx_t bound) {
  for (idx_t i = 0; i < n; ++i)
    if (static_cast<idx_t>(a[i]) >= bound) return i;
  return -1;
}

/// Checks that every entry of the [rows, cols] uint16 array is < bound; the
/// rows are scanned in parallel and the reported offender is the first in
/// row-major order (deterministic for any thread count).
void check_index_range(const char* name, const std::uint16_t* a, idx_t rows, idx_t cols, idx_t bound,
                       const char* bound_name) {
  std::vector<idx_t> bad(static_cast<std::size_t>(rows), -1);
  parallel_for(rows, [&](idx_t r) { bad[static_cast<std::size_t>(r)] = first_out_of_range(a + r * cols, cols, bound); });
  for (idx_t r = 0; r < rows; ++r) {
    const idx_t c = bad[static_cast<std::size_t>(r)];
    VPTQ_CHECK(c < 0, name, ": expected every index < ", bound_name, " = ", bound, ", got ", a[r * cols + c],
               " at flat row ", r, ", column ", c);
  }
}

void check_finite(const char* name, const float* a, idx_t n) {
  for (idx_t i = 0; i < n; ++i)
    VPTQ_CHECK(std::isfinite(a[i]), name, ": expected finite values, got ", a[i], " at position ", i);
}

/// Group-column part of dequantize() for original columns [j0, j1) (one task).
/// col_off[q]: offset of column j0+q's indices in row block 0 (g*R*gs + c), or -1 if it
/// is an outlier column; cb_off/rcb_off: offsets (in vectors) of its group's codebooks.
template <bool kResidual>
void dequant_group_rows(const VQWeightsView& w, idx_t j0, idx_t j1, const idx_t* col_off,
                        const idx_t* cb_off, const idx_t* rcb_off, float* out) {
  const VQLayout& L = w.layout;
  const idx_t M = L.M, N = L.N, v = L.v, gs = L.group_size, R = L.num_indices();
  for (idx_t r = 0; r < R; ++r) {
    const idx_t t_end = std::min(v, M - r * v);
    float* orow = out + r * v * N;
    for (idx_t j = j0; j < j1; ++j) {
      const idx_t q = j - j0;
      if (col_off[q] < 0) continue;
      const idx_t flat = col_off[q] + r * gs;
      const float* cv = w.centroids + (cb_off[q] + static_cast<idx_t>(w.indices[flat])) * v;
      const float* rv = kResidual ? w.res_centroids + (rcb_off[q] + static_cast<idx_t>(w.res_indices[flat])) * v
                                  : nullptr;
      const float s = w.scale != nullptr ? w.scale[j] : 1.0f;
      const float b = w.bias != nullptr ? w.bias[j] : 0.0f;
      for (idx_t t = 0; t < t_end; ++t) {
        float x = cv[t];
        if constexpr (kResidual) x = x + rv[t];
        orow[t * N + j] = x * s + b;
      }
    }
  }
}

}  // namespace

int VQLayout::index_bits() const { return log2_exact(k1); }
int VQLayout::res_index_bits() const { return k2 > 0 ? log2_exact(k2) : 0; }
int VQLayout::outlier_index_bits() const { return k0 > 0 ? log2_exact(k0) : 0; }
idx_t VQLayout::packed_words() const { return words_per_row(group_size, index_bits() + res_index_bits()); }

void check_layout(const VQLayout& L) {
  VPTQ_CHECK(L.M >= 1, "M (out_features) must be >= 1, got ", L.M);
  VPTQ_CHECK(L.N >= 1 && L.N <= kMaxColumns, "N (in_features) must be in [1, 65536] (perm is uint16), got ",
             L.N);
  check_vec_len("v", L.v);
  check_num_centroids("num_centroids k1", L.k1, false);
  check_num_centroids("num_res_centroids k2", L.k2, true);
  check_num_centroids("num_outlier_centroids k0", L.k0, true);
  if (L.k0 > 0) check_vec_len("v0", L.v0);
  VPTQ_CHECK(L.group_num >= 1, "group_num must be >= 1, got ", L.group_num);
  VPTQ_CHECK(L.outlier_size >= 0 && L.outlier_size < L.N, "outlier_size must be in [0, N = ", L.N, "), got ",
             L.outlier_size);
  VPTQ_CHECK(L.outlier_size == 0 || L.k0 > 0, "outlier_size = ", L.outlier_size,
             " > 0 requires an outlier codebook (k0 > 0), got k0 = ", L.k0);
  VPTQ_CHECK(L.group_size >= 1, "group_size must be >= 1, got ", L.group_size);
  VPTQ_CHECK(L.outlier_size + static_cast<idx_t>(L.group_num) * L.group_size == L.N,
             "expected outlier_size + group_num * group_size == N = ", L.N, ", got ", L.outlier_size, " + ",
             L.group_num, " * ", L.group_size, " = ", L.outlier_size + static_cast<idx_t>(L.group_num) * L.group_size);
}

VQLayout make_layout(idx_t M, idx_t N, int v, idx_t k1, idx_t k2, double outlier_percent, int v0, idx_t k0,
                     int group_num) {
  VPTQ_CHECK(M >= 1, "M (out_features) must be >= 1, got ", M);
  VPTQ_CHECK(N >= 1 && N <= kMaxColumns, "N (in_features) must be in [1, 65536] (perm is uint16), got ", N);
  VPTQ_CHECK(std::isfinite(outlier_percent) && outlier_percent >= 0.0 && outlier_percent < 100.0,
             "outlier_percent must be in [0, 100), got ", outlier_percent);
  VPTQ_CHECK(outlier_percent == 0.0 || k0 > 0, "outlier_percent = ", outlier_percent,
             " > 0 requires an outlier codebook (k0 > 0), got k0 = ", k0);
  VPTQ_CHECK(group_num >= 1, "group_num must be >= 1, got ", group_num);
  VPTQ_CHECK(k0 >= 0, "num_outlier_centroids k0 must be 0 (disabled) or a power of two in [2, 65536], got ", k0);

  VQLayout L;
  L.M = M;
  L.N = N;
  L.v = v;
  L.k1 = k1;
  L.k2 = k2;
  L.k0 = k0;
  L.v0 = k0 > 0 ? v0 : 0;
  L.group_num = group_num;
  if (k0 > 0) {
    // Reference get_group_setting: ceil(percent/100 * N) outlier columns, plus
    // the remainder that would not split evenly into group_num groups.
    const idx_t o = static_cast<idx_t>(std::ceil((outlier_percent / 100.0) * static_cast<double>(N)));
    VPTQ_CHECK(o < N, "outlier_percent = ", outlier_percent, " leaves no column for the groups (N = ", N, ")");
    L.outlier_size = o + (N - o) % group_num;
  } else {
    VPTQ_CHECK(N % group_num == 0, "without outliers (k0 = 0) N must be divisible by group_num, got N = ", N,
               ", group_num = ", group_num, " (remainder ", N % group_num, ")");
    L.outlier_size = 0;
  }
  VPTQ_CHECK(N - L.outlier_size >= group_num, "N - outlier_size = ", N - L.outlier_size,
             " columns cannot form group_num = ", group_num, " non-empty groups");
  L.group_size = (N - L.outlier_size) / group_num;
  check_layout(L);
  return L;
}

idx_t packed_row_words(idx_t cols, int b1, int b2) {
  check_bits(b1, b2);
  VPTQ_CHECK(cols >= 0, "cols must be >= 0, got ", cols);
  return words_per_row(cols, b1 + b2);
}

void pack_indices(const std::uint16_t* idx, const std::uint16_t* ridx, idx_t rows, idx_t cols, int b1, int b2,
                  std::uint32_t* out) {
  check_bits(b1, b2);
  VPTQ_CHECK(rows >= 0 && cols >= 0, "pack_indices: rows and cols must be >= 0, got rows = ", rows,
             ", cols = ", cols);
  VPTQ_CHECK(idx != nullptr || rows * cols == 0, "pack_indices: idx must not be null");
  VPTQ_CHECK(b2 == 0 || ridx != nullptr || rows * cols == 0,
             "pack_indices: res indices are required when b2 = ", b2, " > 0");
  VPTQ_CHECK(out != nullptr || rows == 0 || cols == 0, "pack_indices: out must not be null");
  const int T = b1 + b2;
  const idx_t W = words_per_row(cols, T);
  const std::uint32_t lim1 = std::uint32_t{1} << b1;
  const std::uint32_t lim2 = std::uint32_t{1} << b2;
  // First offending column per row (-1 = none) and whether it was the residual code.
  std::vector<idx_t> bad(static_cast<std::size_t>(rows), -1);
  std::vector<char> bad_res(static_cast<std::size_t>(rows), 0);

  parallel_for(rows, [&](idx_t r) {
    const std::uint16_t* ir = idx + r * cols;
    const std::uint16_t* rr = ridx != nullptr ? ridx + r * cols : nullptr;
    std::uint32_t* o = out + r * W;
    std::uint64_t acc = 0;  // pending bits, LSB = next stream position
    int nbits = 0;          // < 32 between codes
    idx_t w = 0;
    for (idx_t c = 0; c < cols; ++c) {
      const std::uint32_t a = ir[c];
      const std::uint32_t b = rr != nullptr ? rr[c] : 0u;
      if ((a >= lim1 || b >= lim2) && bad[static_cast<std::size_t>(r)] < 0) {
        bad[static_cast<std::size_t>(r)] = c;
        bad_res[static_cast<std::size_t>(r)] = a < lim1;
      }
      const std::uint64_t code = (static_cast<std::uint64_t>(b) << b1) | a;
      acc |= code << nbits;
      nbits += T;
      if (nbits >= 32) {
        o[w++] = static_cast<std::uint32_t>(acc);
        acc >>= 32;
        nbits -= 32;
      }
    }
    if (nbits > 0) o[w++] = static_cast<std::uint32_t>(acc);
  });

  for (idx_t r = 0; r < rows; ++r) {
    const idx_t c = bad[static_cast<std::size_t>(r)];
    if (c < 0) continue;
    if (bad_res[static_cast<std::size_t>(r)]) {
      VPTQ_CHECK(false, "pack_indices: residual index ", ridx[r * cols + c], " at row ", r, ", column ", c,
                 " does not fit in b2 = ", b2, " bits (expected < ", lim2, ")");
    }
    VPTQ_CHECK(false, "pack_indices: index ", idx[r * cols + c], " at row ", r, ", column ", c,
               " does not fit in b1 = ", b1, " bits (expected < ", lim1, ")");
  }
}

void unpack_indices(const std::uint32_t* packed, idx_t rows, idx_t cols, int b1, int b2, std::uint16_t* idx,
                    std::uint16_t* ridx) {
  check_bits(b1, b2);
  VPTQ_CHECK(rows >= 0 && cols >= 0, "unpack_indices: rows and cols must be >= 0, got rows = ", rows,
             ", cols = ", cols);
  VPTQ_CHECK((packed != nullptr && idx != nullptr) || rows * cols == 0,
             "unpack_indices: packed and idx must not be null");
  VPTQ_CHECK(b2 == 0 || ridx != nullptr || rows * cols == 0,
             "unpack_indices: res indices output is required when b2 = ", b2, " > 0");
  const int T = b1 + b2;
  const idx_t W = words_per_row(cols, T);
  const std::uint64_t mask = (std::uint64_t{1} << T) - 1;
  const std::uint32_t mask1 = (std::uint32_t{1} << b1) - 1;

  parallel_for(rows, [&](idx_t r) {
    const std::uint32_t* p = packed + r * W;
    std::uint16_t* ir = idx + r * cols;
    std::uint16_t* rr = ridx != nullptr ? ridx + r * cols : nullptr;
    std::uint64_t acc = 0;
    int nbits = 0;
    idx_t w = 0;
    for (idx_t c = 0; c < cols; ++c) {
      if (nbits < T) {  // T <= 32, so one more word always suffices
        acc |= static_cast<std::uint64_t>(p[w++]) << nbits;
        nbits += 32;
      }
      const auto code = static_cast<std::uint32_t>(acc & mask);
      acc >>= T;
      nbits -= T;
      ir[c] = static_cast<std::uint16_t>(code & mask1);
      if (rr != nullptr) rr[c] = static_cast<std::uint16_t>(code >> b1);
    }
  });
}

void check_weights(const VQWeightsView& w) {
  const VQLayout& L = w.layout;
  check_layout(L);
  const idx_t G = L.group_num;
  const idx_t R = L.num_indices();
  VPTQ_CHECK(w.centroids != nullptr, "centroids: expected [G, k1, v] data, got null");
  VPTQ_CHECK(w.indices != nullptr, "indices: expected [G, num_indices, group_size] data, got null");
  if (L.k2 > 0) {
    VPTQ_CHECK(w.res_centroids != nullptr, "res_centroids: expected [G, k2, v] data because k2 = ", L.k2,
               ", got null");
    VPTQ_CHECK(w.res_indices != nullptr, "res_indices: expected [G, num_indices, group_size] data because k2 = ",
               L.k2, ", got null");
  } else {
    VPTQ_CHECK(w.res_centroids == nullptr, "res_centroids: expected null because k2 = 0");
    VPTQ_CHECK(w.res_indices == nullptr, "res_indices: expected null because k2 = 0");
  }
  if (L.k0 > 0) {
    VPTQ_CHECK(w.outlier_centroids != nullptr, "outlier_centroids: expected [k0, v0] data because k0 = ", L.k0,
               ", got null");
    VPTQ_CHECK(w.outlier_indices != nullptr || L.outlier_size == 0,
               "outlier_indices: expected [num_outlier_indices, outlier_size] data because outlier_size = ",
               L.outlier_size, ", got null");
  } else {
    VPTQ_CHECK(w.outlier_centroids == nullptr, "outlier_centroids: expected null because k0 = 0");
    VPTQ_CHECK(w.outlier_indices == nullptr, "outlier_indices: expected null because k0 = 0");
  }

  check_finite("centroids", w.centroids, G * L.k1 * L.v);
  if (L.k2 > 0) check_finite("res_centroids", w.res_centroids, G * L.k2 * L.v);
  if (L.k0 > 0) check_finite("outlier_centroids", w.outlier_centroids, L.k0 * L.v0);
  check_index_range("indices", w.indices, G * R, L.group_size, L.k1, "k1");
  if (L.k2 > 0) check_index_range("res_indices", w.res_indices, G * R, L.group_size, L.k2, "k2");
  if (L.k0 > 0 && L.outlier_size > 0)
    check_index_range("outlier_indices", w.outlier_indices, L.num_outlier_indices(), L.outlier_size, L.k0, "k0");

  if (w.perm != nullptr) {
    std::vector<char> seen(static_cast<std::size_t>(L.N), 0);
    for (idx_t p = 0; p < L.N; ++p) {
      const idx_t j = w.perm[p];
      VPTQ_CHECK(j >= 0 && j < L.N, "perm: expected a permutation of 0..", L.N - 1, ", got perm[", p, "] = ", j);
      VPTQ_CHECK(!seen[static_cast<std::size_t>(j)], "perm: expected a permutation of 0..", L.N - 1, ", got ", j,
                 " twice (again at position ", p, ")");
      seen[static_cast<std::size_t>(j)] = 1;
    }
  }
  if (w.scale != nullptr) check_finite("scale", w.scale, L.N);
  if (w.bias != nullptr) check_finite("bias", w.bias, L.N);
}

void dequantize(const VQWeightsView& w, float* out) {
  check_weights(w);  // also guarantees every table lookup below is in bounds
  const VQLayout& L = w.layout;
  VPTQ_CHECK(out != nullptr, "dequantize: out must not be null");
  const idx_t M = L.M, N = L.N, v0 = L.v0, gs = L.group_size, os = L.outlier_size;
  const idx_t R = L.num_indices(), R0 = L.num_outlier_indices();
  const bool residual = L.k2 > 0;

  // inv[j] = permuted position of original column j (perm validated above).
  std::vector<idx_t> inv(static_cast<std::size_t>(N));
  for (idx_t p = 0; p < N; ++p) inv[static_cast<std::size_t>(w.perm != nullptr ? w.perm[p] : p)] = p;

  // Each task owns a block of ORIGINAL columns j, so output rows are written in
  // contiguous runs and no two tasks touch the same element. Every element is
  // computed by the same expression whatever the blocking: thread-count independent.
  const idx_t nblocks = (N + kDequantColBlock - 1) / kDequantColBlock;
  parallel_for(nblocks, [&](idx_t blk) {
    const idx_t j0 = blk * kDequantColBlock;
    const idx_t j1 = std::min(N, j0 + kDequantColBlock);
    // Per column of the block, hoisted out of the row loop: offset of its
    // indices in row block 0 (g*R*gs + c) and of its group's codebooks, or -1 for outliers.
    idx_t col_off[kDequantColBlock], cb_off[kDequantColBlock], rcb_off[kDequantColBlock];
    for (idx_t j = j0; j < j1; ++j) {
      const idx_t p = inv[static_cast<std::size_t>(j)];
      const idx_t q = j - j0;
      if (p < os) {
        col_off[q] = -1;
        continue;
      }
      const idx_t g = (p - os) / gs;
      col_off[q] = g * R * gs + (p - os) % gs;
      cb_off[q] = g * L.k1;
      rcb_off[q] = g * L.k2;
    }
    // Group columns: row block r covers output rows [r*v, min(M, r*v + v)).
    if (residual)
      dequant_group_rows<true>(w, j0, j1, col_off, cb_off, rcb_off, out);
    else
      dequant_group_rows<false>(w, j0, j1, col_off, cb_off, rcb_off, out);
    // Outlier columns (permuted positions [0, outlier_size)), row blocks of v0.
    if (os == 0) return;
    for (idx_t r = 0; r < R0; ++r) {
      const idx_t t_end = std::min(v0, M - r * v0);
      float* orow = out + r * v0 * N;
      for (idx_t j = j0; j < j1; ++j) {
        const idx_t p = inv[static_cast<std::size_t>(j)];
        if (p >= os) continue;
        const float* cv = w.outlier_centroids + static_cast<idx_t>(w.outlier_indices[r * os + p]) * v0;
        const float s = w.scale != nullptr ? w.scale[j] : 1.0f;
        const float b = w.bias != nullptr ? w.bias[j] : 0.0f;
        for (idx_t t = 0; t < t_end; ++t) orow[t * N + j] = cv[t] * s + b;
      }
    }
  });
}

}  // namespace vptq
