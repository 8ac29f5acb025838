// Private: the internal (kernel-friendly) layout of a GemvPlan section and the
// per-ISA section kernels. Only cpp/src/gemv.cpp and the kernel TUs include this.
#pragma once

#include <cstddef>
#include <cstdint>
#include <new>
#include <vector>

#include "vptq/common.h"
#include "vptq/gemv.h"

namespace vptq::detail {

/// 64-byte aligned allocator: codebook entries (32/64 bytes) must never straddle
/// a cache line (a split load costs two).
template <class T>
struct CacheAlignedAllocator {
  using value_type = T;
  CacheAlignedAllocator() = default;
  template <class U>
  CacheAlignedAllocator(const CacheAlignedAllocator<U>&) noexcept {}  // NOLINT
  T* allocate(std::size_t n) {
    return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t{64}));
  }
  void deallocate(T* p, std::size_t) noexcept { ::operator delete(p, std::align_val_t{64}); }
  template <class U>
  bool operator==(const CacheAlignedAllocator<U>&) const noexcept { return true; }
  template <class U>
  bool operator!=(const CacheAlignedAllocator<U>&) const noexcept { return false; }
};
template <class T>
using aligned_vector = std::vector<T, CacheAlignedAllocator<T>>;

/// Sorted ("codebook-chunked") layout of a section whose main codebook is larger
/// than L1 (built by make_section when GemvOptions allow it). Per tile of rb row
/// blocks, the lookups are bucketed by main codebook chunk (chunk_entries consecutive
/// entries, about L1-sized), so each chunk stays in L1 while all lookups that use it
/// run; within a chunk and a block the lookups keep column order (a "list").
/// Lists are bundled into groups of G (similar lengths) stored round by round:
/// round r holds entry r of each list, so one register accumulator per list runs
/// G independent FMA chains; shorter lists are padded with dummy entries whose
/// column is the zero slot of xs (col == dummy_col). Per output, the partial sum of
/// each list (sequential in c) is added to the accumulator in chunk order.
struct SortedLayout {
  int G = 0;                  ///< lists per group (8 for vp = 8, 4 for vp = 16)
  idx_t chunk_entries = 0;    ///< main codebook entries per chunk
  idx_t num_chunks = 0;
  std::uint16_t dummy_col = 0;           ///< section-local column of the zero slot
  std::vector<std::uint32_t> gstart;     ///< [num_tiles * num_chunks + 1] first group per (tile, chunk)
  std::vector<std::uint32_t> gfirst;     ///< [num_groups + 1] first round of each group
  std::vector<std::uint16_t> gblk;       ///< [num_groups * G] tile-local row block of each list
  std::vector<std::uint32_t> ent;        ///< [rounds * G] col | (entry offset within chunk) << 16
  std::vector<std::uint16_t> rent;       ///< [rounds * G] residual index (times vp if premul); empty without
};

/// SortedLayout::ent word of a lookup: section-local column (dummy_col for padding) in the
/// low 16 bits, element offset of the main entry within its chunk in the high 16 bits.
constexpr std::uint32_t sorted_word(std::uint32_t col, std::uint32_t off) { return col | off << 16; }
constexpr std::uint32_t sorted_col(std::uint32_t w) { return w & 0xffffu; }
constexpr std::uint32_t sorted_off(std::uint32_t w) { return w >> 16; }

/// One block of permuted columns sharing a codebook: the outliers or one group.
struct GemvSection {
  int v = 0;     ///< vector length (rows per block)
  int vp = 0;    ///< padded entry length in floats: 8 (v <= 8) or 16 (v <= 16)
  int rb = 0;    ///< row blocks per index tile
  idx_t col_begin = 0;   ///< first permuted column
  idx_t cols = 0;        ///< number of permuted columns
  idx_t num_blocks = 0;  ///< ceil(M / v)
  idx_t num_tiles = 0;   ///< ceil(num_blocks / rb)
  idx_t k = 0, kr = 0;   ///< main / residual codebook sizes (kr = 0: none)
  CodebookStorage storage = CodebookStorage::F32;
  /// Indices are stored pre-multiplied by vp (entry offsets) when max(k, kr) * vp <= 65536.
  bool premul = false;
  idx_t buf_min_batch = 0;  ///< see TileArgs::buf_min_batch
  aligned_vector<float> cb32, rcb32;          ///< [k, vp], [kr, vp] when storage == F32
  aligned_vector<std::uint16_t> cb16, rcb16;  ///< [k, vp], [kr, vp] (fp16 or bf16 bits) otherwise
  std::vector<std::uint16_t> idx;   ///< [num_tiles, cols, rb] (padding blocks hold 0), times vp if premul
  std::vector<std::uint16_t> ridx;  ///< same shape, empty without residual
  /// Sorted layout (then idx/ridx are empty and rb is the sorted tile's block count).
  bool sorted = false;
  SortedLayout sl;

  idx_t tile_rows() const { return static_cast<idx_t>(rb) * v; }
  const void* cb() const { return storage == CodebookStorage::F32 ? static_cast<const void*>(cb32.data()) : cb16.data(); }
  const void* rcb() const {
    if (kr == 0) return nullptr;
    return storage == CodebookStorage::F32 ? static_cast<const void*>(rcb32.data()) : rcb16.data();
  }
};

/// Arguments of one section kernel call = one index tile of one section.
struct TileArgs {
  int v = 0, vp = 0, rb = 0;
  idx_t cols = 0;
  CodebookStorage storage = CodebookStorage::F32;
  bool premul = false;                  ///< idx/ridx hold entry offsets (index * vp)
  /// Batches of at least this many rows go through the L1 weight buffer (0 = never):
  /// worth it only where a lookup costs much more than the FMAs it feeds.
  idx_t buf_min_batch = 0;
  const void* cb = nullptr;             ///< [k, vp] main codebook (type per storage)
  const void* rcb = nullptr;            ///< [kr, vp] residual codebook or nullptr
  const std::uint16_t* idx = nullptr;   ///< [cols, rb] this tile's main indices
  const std::uint16_t* ridx = nullptr;  ///< [cols, rb] residual indices or nullptr
  idx_t k = 0, kr = 0;                  ///< codebook sizes (kr = 0: no residual)
  /// Sorted layout (see SortedLayout; idx/ridx unused): this tile's groups.
  bool sorted = false;
  int G = 0;
  idx_t num_chunks = 0, chunk_elems = 0;  ///< chunk q's entries start at cb + q * chunk_elems
  std::uint16_t dummy_col = 0;
  const std::uint32_t* gstart = nullptr;  ///< [num_chunks + 1] this tile's group ranges
  const std::uint32_t* gfirst = nullptr;  ///< section-wide
  const std::uint16_t* gblk = nullptr;    ///< section-wide
  const std::uint32_t* ent = nullptr;     ///< section-wide
  const std::uint16_t* rent = nullptr;    ///< section-wide, nullptr without residual
  /// Dense transposed tiles (DequantTKernel) of sorted sections: only tile-local blocks
  /// [blk_lo, blk_hi), block blk written at column offset (blk - blk_lo) * v.
  idx_t blk_lo = 0, blk_hi = 65536;
};

/// Whether the histogram kernel handles a section: v <= 8, fp32 codebooks of at
/// most kHistMaxK entries (the per-thread histogram stays in L1/L2).
constexpr idx_t kHistMaxK = 1024;
constexpr int kHistChunk = 16;  ///< batch rows per histogram pass (two 8-float vectors)

/// Histogram ("group by index") form for batches: for each row block r and batch chunk,
///   H[k, :] = Σ_{c : idx[c*rb+r] = k} xst[c, :]      (sequential in c)
///   acc[b*ld + r*v + l] += Σ_k cb[k][l] · H[k, b]     (sequential in k)
/// and the same for the residual codebook into a separate sum added afterwards.
/// xst: [cols, ldt] transposed pre-scaled activations (column 0 = section's first
/// column; lanes >= batch are 0), batch <= ldt, ldt a multiple of 8 <= kHistChunk;
/// scratch: [2 * max(k, kr), kHistChunk] floats. Bound (vs the direct kernel): the sums are
/// regrouped, n + k terms per output.
using HistKernel = void (*)(const TileArgs& a, const float* xst, idx_t ldt, idx_t batch, float* acc, idx_t ld,
                            float* scratch);
#if defined(__x86_64__) || defined(__i386__)
void gemv_hist_avx2(const TileArgs& a, const float* xst, idx_t ldt, idx_t batch, float* acc, idx_t ld,
                    float* scratch);
void gemv_hist_avx512(const TileArgs& a, const float* xst, idx_t ldt, idx_t batch, float* acc, idx_t ld,
                      float* scratch);
#endif

/// Accumulates one tile: for b < batch, block r < rb, lane l < v (o = b*ld + r*v + l):
/// (sorted sections: the same products, summed per list then per chunk as in SortedLayout;
/// xs must hold 0 at column dummy_col of every row)
///   acc[o] += Σ_c xs[b*ldx + c] · q(c, r, l),   q = cb[idx[c*rb+r]][l] (+ rcb[ridx[c*rb+r]][l])
/// accumulated sequentially in c; with a residual codebook the entry sum q is rounded to
/// fp32 once (it is the dequantized weight before scaling) and then multiplied.
/// (with premul, idx holds index * vp, i.e. the entry's offset in floats/halves.)
/// xs: [batch, ldx] (column 0 = the section's first column);
/// acc: [batch, ld] with ld >= rb*v + 16 addressable floats per row (lanes past v are
/// never modified).
using TileKernel = void (*)(const TileArgs& a, const float* xs, idx_t ldx, idx_t batch, float* acc,
                            idx_t ld);

/// Dense transposed tile for the BLAS path: for c < cols, r < rb, l < v:
///   qt[c*ldq + r*v + l] = cb[idx[c*rb+r]][l] (+ rcb[ridx[c*rb+r]][l]); nothing else is written.
/// qt: [cols, ldq] with ldq >= rb * v (sorted sections: blocks [blk_lo, blk_hi) only,
/// ldq >= (blk_hi - blk_lo) * v).
using DequantTKernel = void (*)(const TileArgs& a, float* qt, idx_t ldq);

void gemv_tile_scalar(const TileArgs& a, const float* xs, idx_t ldx, idx_t batch, float* acc, idx_t ld);
void dequant_t_scalar(const TileArgs& a, float* qt, idx_t ldq);
#if defined(__x86_64__) || defined(__i386__)
void dequant_t_avx2(const TileArgs& a, float* qt, idx_t ldq);
void dequant_t_avx512(const TileArgs& a, float* qt, idx_t ldq);
void gemv_tile_avx2(const TileArgs& a, const float* xs, idx_t ldx, idx_t batch, float* acc, idx_t ld);
void gemv_tile_avx512(const TileArgs& a, const float* xs, idx_t ldx, idx_t batch, float* acc, idx_t ld);
#endif

/// fp16 / bf16 bit patterns <-> float (exact; portable scalar code).
float half_to_float(std::uint16_t h);
std::uint16_t float_to_half_exact_or(float f, bool* exact);
inline float bf16_to_float(std::uint16_t h) {
  const std::uint32_t u = static_cast<std::uint32_t>(h) << 16;
  float f;
  static_assert(sizeof(f) == sizeof(u), "float is 32-bit");
  __builtin_memcpy(&f, &u, sizeof(f));
  return f;
}

}  // namespace vptq::detail
