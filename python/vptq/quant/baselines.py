"""Scalar baselines on the same inputs as VPTQ: round-to-nearest (RTN) and GPTQ.

Both use asymmetric min/max grids per output row and group of ``group_size`` consecutive
input columns (GPTQ: consecutive in act-order permuted order): the range
``[min(w_min, 0), max(w_max, 0)]`` split into ``2**bits - 1`` steps, an integer zero point,
``Ŵ = (code - zero) · scale``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import _core
from .._arrays import as_float_array, check_float, check_int
from .hessian import Hessian, hessian_for, prepare_hessian

__all__ = ["ScalarQuantized", "gptq", "rtn"]


@dataclass
class ScalarQuantized:
    """A weight quantized with per-(row, group) scalar grids."""

    codes: np.ndarray  # uint8 [M, N], original column order
    scale: np.ndarray  # float32 [M, num_groups]
    zero: np.ndarray  # float32 [M, num_groups], integer zero points
    g_idx: np.ndarray  # int32 [N], group of each original column
    bits: int
    group_size: int  # effective: min(requested, N), N for per-channel
    method: str  # "rtn" or "gptq"
    #: tr((W - Ŵ) H (W - Ŵ)ᵀ) against the original W and the H given by the caller (None without H).
    proxy_loss: float | None = None
    #: GPTQ: damping that was needed (normalised units); None for RTN.
    damp: float | None = None

    @property
    def shape(self) -> tuple[int, int]:
        """(M, N) of the quantized weight."""
        return (int(self.codes.shape[0]), int(self.codes.shape[1]))

    @property
    def num_groups(self) -> int:
        """Groups per row."""
        return int(self.scale.shape[1])

    def dequantize(self) -> np.ndarray:
        """Ŵ[i, j] = (codes[i, j] - zero[i, g]) · scale[i, g] with g = g_idx[j]; float32 [M, N]."""
        return _core.scalar_dequantize(self.codes, self.scale, self.zero, self.g_idx)

    @property
    def g_idx_is_implicit(self) -> bool:
        """True when g_idx[j] == j // group_size, i.e. it need not be stored."""
        N = self.shape[1]
        return bool(np.array_equal(self.g_idx, np.arange(N, dtype=np.int64) // self.group_size))

    @property
    def bits_per_weight(self) -> float:
        """Storage per weight: codes + a 16-bit scale and 16-bit zero per group (+ 32-bit g_idx
        per column when act-order makes it explicit)."""
        M, N = self.shape
        total = self.bits * M * N + 32 * M * self.num_groups
        if not self.g_idx_is_implicit:
            total += 32 * N
        return total / (M * N)


def _check_common(W: Any, bits: Any, group_size: Any) -> tuple[np.ndarray, int, int]:
    Wf = as_float_array(W, "W", ndim=2)
    b = check_int(bits, "bits", 1, 8)
    gs = check_int(group_size, "group_size")
    if gs == 0 or gs < -1:
        raise ValueError(f"group_size: expected a positive int or -1 (one group per row), got {gs}")
    return Wf, b, gs


def _result(d: dict[str, Any], method: str) -> ScalarQuantized:
    return ScalarQuantized(codes=d["codes"], scale=d["scale"], zero=d["zero"], g_idx=d["g_idx"],
                           bits=int(d["bits"]), group_size=int(d["group_size"]), method=method)


def rtn(W: Any, bits: int, group_size: int = 128, H: Hessian | Any | None = None) -> ScalarQuantized:
    """Round-to-nearest of W [M, N] with ``bits`` (1..8) per weight and groups of ``group_size``
    input columns (-1: one group per row). With ``H`` ([N, N] or a :class:`Hessian`) the
    result carries the proxy loss."""
    Wf, b, gs = _check_common(W, bits, group_size)
    Hm = None if H is None else hessian_for(H, Wf.shape)
    q = _result(_core.rtn_quantize(Wf, b, gs), "rtn")
    if Hm is not None:
        q.proxy_loss = float(_core.proxy_loss(Wf, q.dequantize(), Hm))
    return q


def gptq(
    W: Any,
    H: Hessian | Any,
    bits: int,
    group_size: int = 128,
    act_order: bool = True,
    percdamp: float = 0.01,
    block_size: int = 128,
) -> ScalarQuantized:
    """GPTQ (Frantar et al.) of W [M, N] with the layer Hessian H ([N, N] or a :class:`Hessian`).

    Groups of ``group_size`` columns (-1: one per row) are consecutive in act-order permuted
    order, their grid fixed from the error-updated weights when the group starts; codes and
    g_idx are returned in the original column order. ``proxy_loss`` is measured against the
    original W and the H given here.
    """
    Wf, b, gs = _check_common(W, bits, group_size)
    bs = check_int(block_size, "block_size", 1, 1 << 20)
    if not isinstance(act_order, (bool, np.bool_)):
        raise TypeError(f"act_order: expected a bool, got {type(act_order).__name__}")
    pd = check_float(percdamp, "percdamp", 0.0)
    Hm = hessian_for(H, Wf.shape)
    prep = prepare_hessian(Hm, percdamp=pd, act_order=bool(act_order), max_percdamp=max(10.0, pd))
    q = _result(_core.gptq_quantize(Wf, prep.core, b, gs, bs), "gptq")
    q.damp = prep.damp
    q.proxy_loss = float(_core.proxy_loss(Wf, q.dequantize(), Hm))
    return q
