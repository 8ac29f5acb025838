"""Inference layers: a quantized Linear running the fused CPU kernel (no torch needed)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import _core

if TYPE_CHECKING:
    from ..quant.quantize import QuantizedWeight

__all__ = ["QuantizedLinear"]


def _as_float32_vector(a: Any, name: str, n: int) -> np.ndarray | None:
    """None, or a C-contiguous float32 [n] copy-if-needed of a real-valued vector."""
    if a is None:
        return None
    if hasattr(a, "detach") and hasattr(a, "cpu"):  # torch tensor
        a = a.detach().cpu().float().numpy()
    arr = np.asarray(a)
    if arr.dtype.kind not in "fiu" or arr.dtype == np.bool_:
        raise TypeError(f"{name}: expected a real-valued array, got dtype {arr.dtype}")
    if arr.shape != (n,):
        raise ValueError(f"{name}: expected shape ({n},), got {arr.shape}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: expected finite values, got NaN/Inf")
    return arr


class QuantizedLinear:
    """``y = x @ Ŵᵀ + bias`` for a VPTQ-quantized weight, computed on the CPU straight from the
    indices and codebooks (Ŵ is never materialised).

    The kernel layout (``_core.GemvPlan``) is built once here and owns copies of everything it
    needs, so the source arrays may be dropped. Calls release the GIL and run on
    ``vptq.get_num_threads()`` threads with the SIMD level of ``vptq.simd_level()``; results are
    bit-identical for any thread count. NaN/Inf in a row of ``x`` propagate to that row of ``y``
    (as in a dense BLAS product); nothing is scanned.
    """

    def __init__(self, qweight: QuantizedWeight, bias: Any = None) -> None:
        """qweight: a ``vptq.QuantizedWeight``; bias: optional layer bias [out_features]."""
        for attr in ("layout", "centroids", "indices"):
            if not hasattr(qweight, attr):
                raise TypeError(f"qweight: expected a vptq.QuantizedWeight, got {type(qweight).__name__}")
        self._init_plan(
            dict(qweight.layout),
            qweight.centroids,
            qweight.indices,
            res_centroids=qweight.res_centroids,
            res_indices=qweight.res_indices,
            outlier_centroids=qweight.outlier_centroids,
            outlier_indices=qweight.outlier_indices,
            perm=qweight.perm,
            scale=qweight.scale,
            norm_bias=qweight.bias,
            bias=bias,
        )

    @classmethod
    def from_arrays(
        cls,
        layout: Mapping[str, int],
        centroids: np.ndarray,  # [G, k1, v] float32
        indices: np.ndarray,  # [G, ceil(M/v), group_size] uint16
        *,
        res_centroids: np.ndarray | None = None,  # [G, k2, v] float32
        res_indices: np.ndarray | None = None,  # [G, ceil(M/v), group_size] uint16
        outlier_centroids: np.ndarray | None = None,  # [k0, v0] float32
        outlier_indices: np.ndarray | None = None,  # [ceil(M/v0), outlier_size] uint16
        perm: np.ndarray | None = None,  # [N] int64
        scale: np.ndarray | None = None,  # [N] float32 (norm scale per original column)
        norm_bias: np.ndarray | None = None,  # [N] float32 (norm bias per original column)
        bias: np.ndarray | None = None,  # [M] float32 layer bias
    ) -> QuantizedLinear:
        """Lower-level constructor from the unpacked arrays (layout as from ``_core.make_layout``)."""
        self = cls.__new__(cls)
        self._init_plan(dict(layout), centroids, indices, res_centroids=res_centroids, res_indices=res_indices,
                        outlier_centroids=outlier_centroids, outlier_indices=outlier_indices, perm=perm,
                        scale=scale, norm_bias=norm_bias, bias=bias)
        return self

    @classmethod
    def from_state_dict(cls, tensors: Mapping[str, Any], layer_config: Mapping[str, Any]) -> QuantizedLinear:
        """From the official tensors of one layer (numpy arrays or torch tensors, no prefix) and its
        ``config_for_layers`` entry; the layer ``bias`` tensor is used when present."""
        from ..quant.quantize import QuantizedWeight

        qw = QuantizedWeight.from_state_dict(tensors, layer_config)
        bias = tensors.get("bias") if isinstance(tensors, Mapping) else None
        if layer_config.get("bias", False) and bias is None:
            raise ValueError("layer_config says bias=true but the state dict has no 'bias' tensor")
        return cls(qw, bias)

    def _init_plan(self, layout: dict[str, int], centroids: Any, indices: Any, *, res_centroids: Any,
                   res_indices: Any, outlier_centroids: Any, outlier_indices: Any, perm: Any, scale: Any,
                   norm_bias: Any, bias: Any) -> None:
        def f32(a: Any, name: str) -> np.ndarray | None:
            if a is None:
                return None
            a = np.asarray(a)
            if a.dtype.kind != "f":
                raise TypeError(f"{name}: expected a float array, got dtype {a.dtype}")
            return np.ascontiguousarray(a, dtype=np.float32)

        def u16(a: Any, name: str) -> np.ndarray | None:
            if a is None:
                return None
            a = np.asarray(a)
            if a.dtype not in (np.uint16, np.int16):
                raise TypeError(f"{name}: expected uint16 (or int16 bit patterns), got dtype {a.dtype}")
            return np.ascontiguousarray(a).view(np.uint16)

        p = None
        if perm is not None:
            p = np.asarray(perm)
            if p.dtype.kind not in "iu":
                raise TypeError(f"perm: expected an integer array, got dtype {p.dtype}")
            p = np.ascontiguousarray(p, dtype=np.int64)
        M = int(layout["M"])
        self._bias = _as_float32_vector(bias, "bias", M)
        self._plan = _core.GemvPlan(
            layout, f32(centroids, "centroids"), f32(res_centroids, "res_centroids"),
            f32(outlier_centroids, "outlier_centroids"), u16(indices, "indices"), u16(res_indices, "res_indices"),
            u16(outlier_indices, "outlier_indices"), p, f32(scale, "scale"), f32(norm_bias, "norm_bias"),
            self._bias,
        )
        self._N = int(self._plan.in_features)
        self._M = int(self._plan.out_features)

    # ------------------------------------------------------------------ info
    @property
    def in_features(self) -> int:
        return self._N

    @property
    def out_features(self) -> int:
        return self._M

    @property
    def bias(self) -> np.ndarray | None:
        """Layer bias float32 [out_features] or None."""
        return self._bias

    @property
    def layout(self) -> dict[str, int]:
        return dict(self._plan.layout)

    @property
    def codebook_storage(self) -> str:
        """How the plan stores the main codebooks: 'f32', or exact 'f16'/'bf16' for large ones."""
        return str(self._plan.codebook_storage)

    @property
    def sorted_sections(self) -> int:
        """Sections (outliers, groups) whose large codebook runs in the sorted, codebook-chunked layout."""
        return int(self._plan.sorted_sections)

    @property
    def memory_bytes(self) -> int:
        return int(self._plan.memory_bytes)

    @property
    def kernel_bytes(self) -> int:
        """Bytes of indices + codebooks one call streams (for GB/s figures)."""
        return int(self._plan.kernel_bytes)

    def __repr__(self) -> str:
        L = self._plan.layout
        return (f"QuantizedLinear(in_features={self.in_features}, out_features={self.out_features}, "
                f"v={L['v']}, k1={L['k1']}, k2={L['k2']}, outliers={L['outlier_size']}, "
                f"bias={self._bias is not None}, codebooks={self.codebook_storage})")

    # --------------------------------------------------------------- compute
    def _as_batch(self, x: Any) -> tuple[np.ndarray, tuple[int, ...]]:
        """x (..., in_features) -> (float32 C-contiguous [B, in_features] (a view when x already is
        contiguous float32), leading shape)."""
        N = self._N
        # Fast path (decode loops call this per layer per token): C-contiguous float32 with
        # at least one row needs no conversion and no further checks.
        if type(x) is np.ndarray and x.dtype == np.float32 and x.flags.c_contiguous and x.ndim >= 1 \
                and x.shape[-1] == N and x.size > 0:
            return x.reshape(-1, N), x.shape[:-1]
        if not isinstance(x, np.ndarray):
            raise TypeError(f"x: expected a numpy.ndarray, got {type(x).__name__}")
        if x.dtype.kind != "f":
            raise TypeError(f"x: expected a floating dtype (float16/32/64), got {x.dtype}")
        if x.ndim == 0 or x.shape[-1] != N:
            raise ValueError(f"x: expected shape (..., {N}), got {x.shape}")
        lead = tuple(int(d) for d in x.shape[:-1])
        if x.size == 0:
            raise ValueError(f"x: expected at least one row, got shape {x.shape} (batch 0)")
        x2 = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, N)
        return x2, lead

    def __call__(self, x: np.ndarray, *, simd_level: str | None = None) -> np.ndarray:
        """y = x @ Ŵᵀ + bias for x of shape (..., in_features) (float16/32/64; converted to float32,
        no copy for C-contiguous float32) -> float32 (..., out_features).
        simd_level forces a kernel ('scalar', 'avx2', 'avx512'); default: ``vptq.simd_level()``."""
        x2, lead = self._as_batch(x)
        y = self._plan.forward(x2, simd_level)
        return y.reshape(*lead, self._M)

    def dequantize(self) -> np.ndarray:
        """Dense Ŵ float32 [out_features, in_features] (without the layer bias)."""
        return self._plan.dequantize()
