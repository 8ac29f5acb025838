"""
vptq C++ core (private; use the vptq package)
"""
from __future__ import annotations
import numpy
import numpy.typing
import typing
__all__: list[str] = ['GemvPlan', 'HessianAccumulator', 'NumericalError', 'PreparedHessian', 'check_layout', 'check_weights', 'cpu_features', 'dequantize', 'get_num_threads', 'gptq_quantize', 'kmeans', 'make_layout', 'nearest_centroid', 'pack_indices', 'prepare_hessian', 'proxy_loss', 'rtn_quantize', 'scalar_dequantize', 'set_num_threads', 'set_simd_level', 'simd_level', 'unpack_indices', 'vptq_quantize']
class NumericalError(ValueError):
    pass
class HessianAccumulator:
    """
    Streaming float64 accumulation of S = sum of x x^T over rows of x [rows, n].
    Not safe to share one object between Python threads.
    """
    def __init__(self, n: typing.SupportsInt | typing.SupportsIndex) -> None:
        ...
    @typing.overload
    def add_batch(self, x: numpy.typing.NDArray[numpy.float32]) -> None:
        """
        Add the rows of x: float32[rows, n] (C-contiguous); rows may be 0. Non-finite -> ValueError.
        """
    @typing.overload
    def add_batch(self, x: numpy.typing.NDArray[numpy.float64]) -> None:
        """
        Add the rows of x: float64[rows, n] (C-contiguous); rows may be 0. Non-finite -> ValueError.
        """
    def merge(self, other: HessianAccumulator) -> None:
        """
        Add another accumulator's sums (same n).
        """
    def second_moment(self) -> numpy.typing.NDArray[numpy.float64]:
        """
        E[x x^T] = S / count as a new float64[n, n]; ValueError if count == 0.
        """
    def sum(self) -> numpy.typing.NDArray[numpy.float64]:
        """
        S = sum of x x^T as a new float64[n, n].
        """
    @property
    def count(self) -> int:
        """
        Number of rows accumulated.
        """
    @property
    def n(self) -> int:
        ...
class PreparedHessian:
    """
    Everything derived from one Hessian (made by prepare_hessian). Array properties
    return new numpy copies; matrices are in the act-order permuted order.
    """
    def __repr__(self) -> str:
        ...
    @property
    def H(self) -> numpy.typing.NDArray[numpy.float64]:
        """
        float64[n, n]: normalised, dead-fixed, permuted, undamped Hessian.
        """
    @property
    def U(self) -> numpy.typing.NDArray[numpy.float32]:
        """
        float32[n, n]: upper Cholesky factor of (H + damp I)^-1 = U^T U (permuted order).
        """
    @property
    def damp(self) -> float:
        """
        Damping added to the normalised diagonal.
        """
    @property
    def dead(self) -> numpy.typing.NDArray[numpy.bool]:
        """
        bool[n]: columns whose input diagonal was 0 (original order).
        """
    @property
    def diag(self) -> numpy.typing.NDArray[numpy.float64]:
        """
        float64[n]: normalised diagonal, original order, before the dead-column fix.
        """
    @property
    def n(self) -> int:
        ...
    @property
    def perm(self) -> numpy.typing.NDArray[numpy.int64]:
        """
        int64[n]: perm[p] = original column at permuted position p.
        """
    @property
    def scale(self) -> float:
        """
        Mean input diagonal; H_norm = H / scale.
        """
class GemvPlan:
    """
    A quantized Linear prepared for y = x @ W_hat.T + bias straight from VPTQ indices and codebooks (never materialising W_hat). Owns copies of everything it needs.
    """
    def __init__(self, layout: dict, centroids: numpy.typing.NDArray[numpy.float32], res_centroids: numpy.typing.NDArray[numpy.float32] | None, outlier_centroids: numpy.typing.NDArray[numpy.float32] | None, indices: numpy.typing.NDArray[numpy.uint16], res_indices: numpy.typing.NDArray[numpy.uint16] | None = None, outlier_indices: numpy.typing.NDArray[numpy.uint16] | None = None, perm: numpy.typing.NDArray[numpy.int64] | None = None, scale: numpy.typing.NDArray[numpy.float32] | None = None, bias: numpy.typing.NDArray[numpy.float32] | None = None, layer_bias: numpy.typing.NDArray[numpy.float32] | None = None, compact_codebooks: bool = True, blas_min_batch: typing.SupportsInt | typing.SupportsIndex = -1, sorted_layout: bool = True) -> None:
        """
        Builds the kernel layout from unpacked VQ weights (same arrays as dequantize; layer_bias f32[M] or None). Validates everything (ValueError on bad shapes, out-of-range indices, non-permutation perm, non-finite values). compact_codebooks: allow exact fp16/bf16 storage of large codebooks. blas_min_batch: batches with at least this many rows use dequantized tiles + BLAS (0 = never, -1 = automatic: 48 or 64 depending on the codebooks). sorted_layout: allow the sorted (codebook-chunked) layout for codebooks beyond ~96 KB (faster lookups, 4 instead of 2 bytes per index).
        """
    def dequantize(self) -> numpy.typing.NDArray[numpy.float32]:
        """
        Dense W_hat f32[M, N] rebuilt from the plan's own buffers.
        """
    def forward(self, x: numpy.typing.NDArray[numpy.float32], level: str | None = None) -> numpy.typing.NDArray[numpy.float32]:
        """
        y f32[B, M] = x f32[B, N] @ W_hat.T + bias. level: force a SIMD level ('scalar', 'avx2', 'avx512'); default: the current vptq.simd_level(). NaN/Inf in a row of x propagate to that row of y.
        """
    @property
    def blas_min_batch(self) -> int:
        """
        Batches with at least this many rows use dequantized tiles + BLAS (0 = never).
        """
    @blas_min_batch.setter
    def blas_min_batch(self, arg1: typing.SupportsInt | typing.SupportsIndex) -> None:
        ...
    @property
    def codebook_storage(self) -> str:
        """
        Storage of the main codebooks inside the plan: 'f32', 'f16' or 'bf16' (always exact).
        """
    @property
    def hist_min_batch(self) -> int:
        """
        Batches with at least this many rows use the histogram kernel on small-codebook sections (0 = never).
        """
    @hist_min_batch.setter
    def hist_min_batch(self, arg1: typing.SupportsInt | typing.SupportsIndex) -> None:
        ...
    @property
    def in_features(self) -> int:
        ...
    @property
    def kernel_bytes(self) -> int:
        """
        Bytes of indices + codebooks one forward streams.
        """
    @property
    def layout(self) -> dict:
        ...
    @property
    def memory_bytes(self) -> int:
        """
        Bytes held by the plan.
        """
    @property
    def out_features(self) -> int:
        ...
    @property
    def sorted_sections(self) -> int:
        """
        Number of sections (outliers, groups) in the sorted (codebook-chunked) layout.
        """
def check_layout(layout: dict) -> dict:
    """
    Validates a layout dict (keys M, N, v, k1, k2, v0, k0, group_num, outlier_size, group_size) and returns it normalised with the derived fields.
    """
def check_weights(layout: dict, centroids: numpy.typing.NDArray[numpy.float32], res_centroids: numpy.typing.NDArray[numpy.float32] | None, outlier_centroids: numpy.typing.NDArray[numpy.float32] | None, indices: numpy.typing.NDArray[numpy.uint16], res_indices: numpy.typing.NDArray[numpy.uint16] | None = None, outlier_indices: numpy.typing.NDArray[numpy.uint16] | None = None, perm: numpy.typing.NDArray[numpy.int64] | None = None, scale: numpy.typing.NDArray[numpy.float32] | None = None, bias: numpy.typing.NDArray[numpy.float32] | None = None) -> None:
    """
    Validates unpacked VQ weights against the layout (shapes, index ranges, perm is a permutation, finite values); ValueError naming the first problem. centroids f32[G,k1,v]; res_centroids f32[G,k2,v] | None (iff k2 > 0); outlier_centroids f32[k0,v0] | None (iff k0 > 0); indices u16[G,num_indices,group_size]; res_indices like indices | None (iff k2 > 0); outlier_indices u16[num_outlier_indices,outlier_size] | None; perm i64[N] | None (identity); scale, bias f32[N] | None (per original column).
    """
def cpu_features() -> dict:
    """
    CPU features seen by the dispatcher and the detected/selected SIMD level.
    """
def dequantize(layout: dict, centroids: numpy.typing.NDArray[numpy.float32], res_centroids: numpy.typing.NDArray[numpy.float32] | None, outlier_centroids: numpy.typing.NDArray[numpy.float32] | None, indices: numpy.typing.NDArray[numpy.uint16], res_indices: numpy.typing.NDArray[numpy.uint16] | None = None, outlier_indices: numpy.typing.NDArray[numpy.uint16] | None = None, perm: numpy.typing.NDArray[numpy.int64] | None = None, scale: numpy.typing.NDArray[numpy.float32] | None = None, bias: numpy.typing.NDArray[numpy.float32] | None = None) -> numpy.typing.NDArray[numpy.float32]:
    """
    Dense reconstruction W_hat f32[M, N] of unpacked VQ weights (design note §3.4): outlier columns first, then groups, un-permuted by perm, then W*scale + bias per original column. Runs check_weights first. centroids f32[G,k1,v]; res_centroids f32[G,k2,v] | None (iff k2 > 0); outlier_centroids f32[k0,v0] | None (iff k0 > 0); indices u16[G,num_indices,group_size]; res_indices like indices | None (iff k2 > 0); outlier_indices u16[num_outlier_indices,outlier_size] | None; perm i64[N] | None (identity); scale, bias f32[N] | None (per original column).
    """
def get_num_threads() -> int:
    """
    Number of threads vptq's parallel loops use.
    """
def gptq_quantize(W: numpy.typing.NDArray[numpy.float32], hessian: PreparedHessian, bits: typing.SupportsInt | typing.SupportsIndex, group_size: typing.SupportsInt | typing.SupportsIndex, block_size: typing.SupportsInt | typing.SupportsIndex = 128) -> dict:
    """
    GPTQ with a PreparedHessian (act-order iff its perm is not the identity). Same dict as rtn_quantize;
    codes and g_idx are in the original column order.
    """
def kmeans(x: numpy.typing.NDArray[numpy.float32], k: typing.SupportsInt | typing.SupportsIndex, weights: numpy.typing.NDArray[numpy.float32] | None = None, max_iter: typing.SupportsInt | typing.SupportsIndex = 100, tol: typing.SupportsFloat | typing.SupportsIndex = 1e-05, seed: typing.SupportsInt | typing.SupportsIndex = 0, kmeanspp: bool = False) -> tuple[numpy.typing.NDArray[numpy.float32], numpy.typing.NDArray[numpy.int32], list[float], int]:
    """
    Weighted k-means (Lloyd). x: float32[n, d] (1 <= d <= 16), weights: float32[n] >= 0 or None.
    Returns (centroids float32[k, d], assignment int32[n], inertia_history list[float], iterations).
    inertia_history[0] is for the initial centroids, the last entry for the returned ones.
    """
def make_layout(M: typing.SupportsInt | typing.SupportsIndex, N: typing.SupportsInt | typing.SupportsIndex, v: typing.SupportsInt | typing.SupportsIndex, k1: typing.SupportsInt | typing.SupportsIndex, k2: typing.SupportsInt | typing.SupportsIndex = 0, outlier_percent: typing.SupportsFloat | typing.SupportsIndex = 0.0, v0: typing.SupportsInt | typing.SupportsIndex = 0, k0: typing.SupportsInt | typing.SupportsIndex = 0, group_num: typing.SupportsInt | typing.SupportsIndex = 1) -> dict:
    """
    Layout of a quantized Linear W[M, N] (reference get_group_setting) as a dict of all VQLayout fields plus num_indices, num_outlier_indices, index_bits, res_index_bits, outlier_index_bits, packed_words. k2 = 0: no residual; k0 = 0: no outliers (then N % group_num == 0 is required).
    """
def nearest_centroid(x: numpy.typing.NDArray[numpy.float32], centroids: numpy.typing.NDArray[numpy.float32], method: str = 'fused') -> tuple[numpy.typing.NDArray[numpy.int32], numpy.typing.NDArray[numpy.float32]]:
    """
    Nearest centroid (squared L2, lowest index on ties) of each row of x float32[n, d] among
    centroids float32[k, d]. Returns (idx int32[n], dist float32[n]). method: 'fused' (SIMD
    kernel, default) or 'gemm' (BLAS GEMM tiles + argmin; for comparison).
    """
def pack_indices(idx: numpy.typing.NDArray[numpy.uint16], ridx: numpy.typing.NDArray[numpy.uint16] | None, b1: typing.SupportsInt | typing.SupportsIndex, b2: typing.SupportsInt | typing.SupportsIndex = 0) -> numpy.typing.NDArray[numpy.uint32]:
    """
    Packs codes (res << b1) | idx of width b1 + b2 into the LSB-first 32-bit bitstream of the VPTQ format, one stream per row along the last axis. idx, ridx: uint16[..., cols] -> uint32[..., ceil(cols*(b1+b2)/32)]. ValueError if a code does not fit its width.
    """
def prepare_hessian(H: numpy.typing.NDArray[numpy.float64], percdamp: typing.SupportsFloat | typing.SupportsIndex = 0.01, act_order: bool = True, max_percdamp: typing.SupportsFloat | typing.SupportsIndex = 10.0) -> PreparedHessian:
    """
    Normalise, fix dead columns, act-order permute, damp and factor H: float64[n, n] (symmetric).
    ValueError for bad input, NumericalError if no damping up to max_percdamp makes it definite.
    """
def proxy_loss(W: numpy.typing.NDArray[numpy.float32], W_hat: numpy.typing.NDArray[numpy.float32], H: numpy.typing.NDArray[numpy.float64]) -> float:
    """
    tr((W - W_hat) H (W - W_hat)^T) for W, W_hat float32[M, N] and H float64[N, N].
    """
def rtn_quantize(W: numpy.typing.NDArray[numpy.float32], bits: typing.SupportsInt | typing.SupportsIndex, group_size: typing.SupportsInt | typing.SupportsIndex) -> dict:
    """
    Round-to-nearest with asymmetric min/max grids per row and group of input columns
    (group_size <= 0: one group per row). Returns a dict: codes uint8[M, N], scale/zero
    float32[M, G], g_idx int32[N], bits, group_size (effective), num_groups.
    """
def scalar_dequantize(codes: numpy.typing.NDArray[numpy.uint8], scale: numpy.typing.NDArray[numpy.float32], zero: numpy.typing.NDArray[numpy.float32], g_idx: numpy.typing.NDArray[numpy.int32]) -> numpy.typing.NDArray[numpy.float32]:
    """
    W_hat[i, j] = (codes[i, j] - zero[i, g]) * scale[i, g], g = g_idx[j]; float32[M, N].
    """
def set_num_threads(n: typing.SupportsInt | typing.SupportsIndex) -> None:
    """
    Set the number of threads used by vptq's parallel loops.
    """
def set_simd_level(level: str) -> None:
    """
    Force a SIMD level; ValueError if this CPU lacks it.
    """
def simd_level() -> str:
    """
    SIMD level the kernels currently use: 'scalar', 'avx2', 'avx512' or 'neon'.
    """
def unpack_indices(packed: numpy.typing.NDArray[numpy.uint32], cols: typing.SupportsInt | typing.SupportsIndex, b1: typing.SupportsInt | typing.SupportsIndex, b2: typing.SupportsInt | typing.SupportsIndex = 0) -> tuple[numpy.typing.NDArray[numpy.uint16], numpy.typing.NDArray[numpy.uint16] | None]:
    """
    Inverse of pack_indices: uint32[..., words] -> (idx uint16[..., cols], ridx uint16[..., cols] or None when b2 == 0). ValueError unless words == ceil(cols*(b1+b2)/32).
    """
def vptq_quantize(W: numpy.typing.NDArray[numpy.float32], hessian: PreparedHessian, v: typing.SupportsInt | typing.SupportsIndex, k1: typing.SupportsInt | typing.SupportsIndex, k2: typing.SupportsInt | typing.SupportsIndex, outlier_percent: typing.SupportsFloat | typing.SupportsIndex, v0: typing.SupportsInt | typing.SupportsIndex, k0: typing.SupportsInt | typing.SupportsIndex, group_num: typing.SupportsInt | typing.SupportsIndex, enable_norm: bool, enable_perm: bool, block_size: typing.SupportsInt | typing.SupportsIndex, kmeans_iters: typing.SupportsInt | typing.SupportsIndex, kmeans_tol: typing.SupportsFloat | typing.SupportsIndex, seed: typing.SupportsInt | typing.SupportsIndex, error_feedback: bool, norm_aware_hessian: bool) -> dict:
    """
    Quantize W [M, N] float32 with VPTQ given a prepared Hessian; returns a dict of arrays.
    """
