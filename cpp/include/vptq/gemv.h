// Fused VPTQ GEMV/GEMM for small batches: y = x · Ŵᵀ (+ layer bias) computed
// straight from indices and codebooks, never materialising Ŵ.
//
// A GemvPlan is built once per layer from a VQWeightsView (format.h). It copies
// everything it needs into a kernel-friendly layout, so the caller may free the
// originals afterwards:
//  * x pre-scaling: the kernel consumes xs[b, p] = x[b, perm[p]] · scale[perm[p]]
//    (permuted, scaled activations) and the norm bias enters as one dot product
//    Σ_j x[b, j] · bias[j] per batch row, added to every output of that row;
//  * indices are re-tiled per section (outliers, then each group) as
//    [row_tile][column][RB] uint16 with RB consecutive row blocks of v rows, so
//    one column's RB indices are adjacent and the stream is read sequentially;
//  * codebook entries are padded to 8 (v <= 8) or 16 (v <= 16) floats; they are
//    kept as fp32, or as fp16 / bf16 when that storage is exact for every value
//    (lossless; true for checkpoints stored in fp16/bf16) and the fp32 table is
//    larger than L1 (GemvOptions::compact_codebook_bytes): fewer cache lines per
//    lookup, converted with F16C / a shift in the kernel;
//  * indices of codebooks with k * vp <= 65536 are stored pre-multiplied by vp
//    (entry offsets), saving a shift per lookup;
//  * sections with a main codebook beyond ~L1/L2 (GemvOptions::sorted_min_codebook_bytes)
//    use the sorted layout instead: per tile of up to 256 row blocks, lookups are
//    bucketed by L1-sized chunk of the codebook and stored as (column, offset) pairs,
//    so a random lookup hits L1 instead of L2/L3 (4 bytes per index instead of 2).
//
// Kernels (per SIMD level, chosen at run time; cpp/src/kernels/gemv_tile_inl.h):
//  * direct: per column, broadcast xs and FMA each looked-up entry into a register
//    tile of row-block accumulators (batch 1: 8 blocks; batches: 2-4 blocks x 2-3
//    rows), indices read four at a time with one 64-bit load;
//  * buffered (batches, fp16/bf16 codebooks with a residual: from 4 rows when k > 4096,
//    else from 8): the weight vectors of 32 columns are looked up once into an L1
//    buffer that every batch row then reads; same per-output order as direct;
//  * sorted (sorted sections, any batch): per codebook chunk, groups of 8 (v <= 8) or
//    4 lists, one (column-ordered) list of lookups per row block, summed in registers
//    and added to the block's accumulator when the list ends;
//  * histogram (batches >= 8, v <= 8, k <= 1024): per row block, sum activations
//    per codebook entry, then one small product with the codebook;
//  * BLAS (large batches): transposed dense tiles + cblas_sgemm.
//
// Numerics (the contract the tests check): every output is accumulated in fp32,
// sequentially over permuted columns p = 0..N-1 (outliers first, then the groups
// in order); within a group with a residual codebook, each weight vector is first
// formed as main + residual entry in fp32 (rounded once, exactly as in dequantize)
// and then multiplied, so there is one term per column; then the norm-bias dot
// product (computed in double, rounded once) and the layer bias are added. (Sorted
// sections sum each (chunk, block) list separately, in column order, and add the list
// sums in chunk order: per output at most one more rounding per chunk, n + chunks
// terms in the bound below; every level and batch row uses that same order.) All SIMD
// levels use this exact order; they differ from the scalar reference only by fused
// multiply-add rounding, so for an output with n = N accumulated terms t_k:
//   |y_simd - y_scalar| <= 2 · (n + 2) · 2^-24 · (Σ_k |t_k| + |Σ x·bias| + |layer bias|).
// The histogram form for batches (GemvOptions::hist_min_batch) regroups the sums
// (main and residual products separately): per output, 2n + k + kr + 2 terms in the
// same bound, with |t_k| taken over the main and residual products.
// Results are bit-identical for any thread count (row tiles are fixed, each
// output is computed by one thread). NaN/Inf in x propagate as in a dense BLAS
// product: a non-finite x[b, j] makes (essentially) every y[b, :] non-finite.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "vptq/common.h"
#include "vptq/format.h"
#include "vptq/simd.h"

namespace vptq {

/// Storage type of a widened codebook inside a GemvPlan.
enum class CodebookStorage : int { F32 = 0, F16 = 1, BF16 = 2 };
const char* codebook_storage_name(CodebookStorage s);

/// Plan-construction options (defaults are what the library uses).
struct GemvOptions {
  /// Codebooks whose fp32 padded table is larger than this many bytes are
  /// stored as fp16 or bf16 when that is exact for all their values.
  std::size_t compact_codebook_bytes = 32 * 1024;
  /// Allow fp16/bf16 storage at all (false: always fp32).
  bool allow_compact_codebooks = true;
  /// Batches of at least this many rows dequantize row tiles into a per-thread
  /// buffer and multiply with BLAS (cblas_sgemm) instead of the lookup kernels.
  /// 0 = never; -1 = automatic, from measurements on a Zen 3 core (4096x4096, one
  /// thread, thread CPU time): 48 when a group section has a residual codebook and
  /// cannot use the histogram form (v12-k4096-4096, buffered lookups: 29 ms vs BLAS 36
  /// ms at batch 32, 59 vs 49 ms at 64), else 64 (v8-k65536-0: 27 vs 28 ms at 32, 51
  /// vs 44 ms at 64; v8-k256-256 histogram 28 ms vs BLAS 52 ms at 48).
  idx_t blas_min_batch = -1;
  /// Batches of at least this many rows use the histogram form on sections with
  /// v <= 8 and fp32 codebooks of <= 1024 entries (SIMD levels only): per row block,
  /// activations are summed per codebook entry, then multiplied by the codebook once
  /// (k·v instead of N·v multiply-adds per batch row). 0 = never.
  idx_t hist_min_batch = 8;
  /// Sections whose main codebook (in its chosen storage, entries padded) is larger
  /// than this many bytes, and whose residual codebook (if any) is at most
  /// sorted_max_residual_bytes, use the sorted layout (SortedLayout in
  /// cpp/src/kernels/gemv_kernels.h): lookups bucketed by L1-sized codebook chunk, so
  /// a random lookup hits L1 instead of L2/L3. Costs 4 bytes per index (6 with a
  /// residual) instead of 2 (4). 0 = never. Measured on a Zen 3 core, 4096x4096, batch
  /// 1, one thread (direct vs sorted): v8-k65536-0 1.55 vs 1.16 ms, v8-k16384-0 1.26
  /// vs 1.02, v8-k8192-0 1.13 vs 1.02, v8-k65536-256 2.92 vs 2.41; but v6-k4096-0
  /// (64 KB of fp16) 1.20 vs 1.45 and, with a residual codebook beyond L1 (whose
  /// random lines evict the chunk), v12-k4096-4096 1.80 vs 2.4 and v16-k65536-65536
  /// 2.63 vs 3.12.
  std::size_t sorted_min_codebook_bytes = 96 * 1024;
  std::size_t sorted_max_residual_bytes = 32 * 1024;
  /// Target bytes of one codebook chunk of the sorted layout (rounded down to a
  /// power-of-two number of entries).
  std::size_t sorted_chunk_bytes = 8 * 1024;
  /// Most row blocks per tile (= parallel task) of the sorted layout: each chunk is
  /// loaded into L1 once per tile, so larger tiles amortise it (v8-k65536-0: 64
  /// blocks 1.28 ms, 128 1.20, 256 1.16). Tiles are made smaller (down to 64 blocks)
  /// so that a layer has at least 4 of them to share between threads.
  idx_t sorted_tile_blocks = 256;
};

namespace detail {
struct GemvSection;  // defined in cpp/src/kernels/gemv_kernels.h
}

/// A quantized Linear prepared for fast y = x · Ŵᵀ + bias on the CPU.
class GemvPlan {
 public:
  /// w: validated with check_weights() (corrupt input throws std::invalid_argument).
  /// layer_bias: [M] or nullptr.
  explicit GemvPlan(const VQWeightsView& w, const float* layer_bias = nullptr,
                    const GemvOptions& opt = GemvOptions());
  ~GemvPlan();
  GemvPlan(GemvPlan&&) noexcept;
  GemvPlan& operator=(GemvPlan&&) noexcept;
  GemvPlan(const GemvPlan&) = delete;
  GemvPlan& operator=(const GemvPlan&) = delete;

  idx_t in_features() const { return N_; }
  idx_t out_features() const { return M_; }
  const VQLayout& layout() const { return layout_; }

  /// y = x · Ŵᵀ + bias with the current get_simd_level().
  /// x: [batch, N] row-major fp32; y: [batch, M] row-major fp32 (written, not read).
  /// batch >= 1 (std::invalid_argument otherwise). Any batch size works; the
  /// lookup kernel processes it in register tiles of up to 3 rows; batches of at
  /// least options().blas_min_batch rows take the dequantize-tile + BLAS path
  /// (then the bound above does not apply: BLAS sums in its own order).
  void forward(const float* x, idx_t batch, float* y) const;
  /// Same with an explicit SIMD level (must be supported by this CPU).
  void forward(const float* x, idx_t batch, float* y, SimdLevel level) const;

  /// Dense Ŵ [M, N] (original column order) reconstructed from the plan's own
  /// buffers; equals vptq::dequantize() of the source up to the codebook storage
  /// (which is lossless by construction). out: [M, N].
  void dequantize(float* out) const;

  /// Row tiles [t * task_rows, ...) dequantized into out [rows, N] (original column order).
  idx_t task_rows() const { return task_rows_; }
  /// Changes the BLAS switch point (see GemvOptions::blas_min_batch).
  void set_blas_min_batch(idx_t b) { opt_.blas_min_batch = b; }
  /// Changes the histogram switch point (see GemvOptions::hist_min_batch).
  void set_hist_min_batch(idx_t b) { opt_.hist_min_batch = b; }
  const GemvOptions& options() const { return opt_; }

  /// Bytes held by the plan (indices + codebooks + vectors).
  std::size_t memory_bytes() const;
  /// Bytes of indices + codebooks the kernel streams per forward (for GB/s figures).
  std::size_t kernel_bytes() const;
  /// Number of sections (outliers, groups) that use the sorted layout.
  int sorted_sections() const;
  /// Storage chosen for the main codebooks ("f32", "f16", "bf16").
  std::string codebook_storage() const;

 private:
  void prescale(const float* x, idx_t batch, float* xs, float* xb) const;
  /// Dense rows [t * task_rows_, min(M, (t + 1) * task_rows_)) into out [rows, N].
  void dequantize_task(idx_t t, float* out) const;
  void forward_blas(const float* x, idx_t batch, float* y, SimdLevel level) const;

  VQLayout layout_;
  GemvOptions opt_;
  idx_t M_ = 0, N_ = 0;
  idx_t task_rows_ = 0;  ///< rows per parallel task (fixed: independent of thread count)
  idx_t blas_rows_ = 0;  ///< rows per dense tile of the BLAS path (divides task_rows_)
  idx_t num_tasks_ = 0;
  std::vector<idx_t> perm_;      ///< [N]
  std::vector<float> scale_;     ///< [N] per original column (1 if absent)
  std::vector<float> nbias_;     ///< [N] per original column, empty if absent
  std::vector<float> lbias_;     ///< [M] layer bias, empty if absent
  std::vector<detail::GemvSection> sections_;  ///< outliers (if any) then groups
};

}  // namespace vptq
