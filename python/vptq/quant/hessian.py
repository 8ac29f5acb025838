"""Layer-input Hessians: collection of E[x xᵀ], preparation for the quantizers, proxy loss.

``Hessian`` accumulates the second moment of a Linear layer's inputs in float64 (any batch
shape ``(..., in_features)``, numpy or torch). :func:`prepare_hessian` derives everything the
quantizers need from one matrix: normalisation by the mean diagonal, dead columns,
the act-order permutation, damping and the upper Cholesky factor U of the damped inverse
(``(H + damp·I)⁻¹ = Uᵀ U``). :func:`proxy_loss` is ``tr((W - Ŵ) H (W - Ŵ)ᵀ)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import _core
from .._arrays import as_float_array, as_square_matrix, check_float, check_int

__all__ = ["Hessian", "PreparedHessian", "prepare_hessian", "proxy_loss"]


class Hessian:
    """Streaming float64 second moment E[x xᵀ] of a layer's inputs.

    Not safe to feed one object from several threads at once.
    """

    def __init__(self, in_features: int) -> None:
        n = check_int(in_features, "in_features", 1, 1 << 17)
        self._acc = _core.HessianAccumulator(n)

    @property
    def in_features(self) -> int:
        """Number of input features n (the matrix is n × n)."""
        return int(self._acc.n)

    @property
    def count(self) -> int:
        """Number of input rows (tokens) accumulated so far."""
        return int(self._acc.count)

    def add_batch(self, x: Any) -> None:
        """Accumulate the rows of ``x`` with shape ``(..., in_features)`` (leading dims flattened).

        numpy arrays and torch tensors of float16/bfloat16/float32/float64 are accepted;
        float64 input is accumulated without rounding to float32. An empty batch is a no-op.
        """
        a = as_float_array(x, "x", dtype=None, allow_empty=True)
        n = self.in_features
        if a.ndim < 1 or a.shape[-1] != n:
            raise ValueError(f"x: expected shape (..., {n}), got {a.shape}")
        self._acc.add_batch(a.reshape(-1, n))

    @property
    def matrix(self) -> np.ndarray:
        """E[x xᵀ] as a new float64 ``[in_features, in_features]`` array (ValueError if empty)."""
        if self.count == 0:
            raise ValueError("Hessian.matrix: no input rows were added (count is 0)")
        return self._acc.second_moment()

    def merge(self, other: Hessian) -> None:
        """Add the rows accumulated by ``other`` (same ``in_features``) to this Hessian."""
        if not isinstance(other, Hessian):
            raise TypeError(f"other: expected a Hessian, got {type(other).__name__}")
        if other.in_features != self.in_features:
            raise ValueError(
                f"other: expected in_features={self.in_features}, got in_features={other.in_features}"
            )
        self._acc.merge(other._acc)

    def __repr__(self) -> str:
        return f"Hessian(in_features={self.in_features}, count={self.count})"


class PreparedHessian:
    """Everything derived from one Hessian; ``core`` is passed to the C++ quantizers.

    ``perm[p]`` is the original column at permuted position p; ``diag`` is the normalised
    diagonal in original order before the dead-column fix; ``dead`` marks columns that saw
    no input; ``damp`` is the damping added to the normalised diagonal; ``scale`` the mean
    input diagonal. ``H`` and ``U`` are (large) copies in permuted order.
    """

    __slots__ = ("core", "damp", "dead", "diag", "n", "perm", "scale")

    def __init__(self, core: Any) -> None:
        if not isinstance(core, _core.PreparedHessian):
            raise TypeError(f"core: expected a vptq._core.PreparedHessian, got {type(core).__name__}")
        self.core = core
        self.n: int = int(core.n)
        self.perm: np.ndarray = core.perm  # int64 [n]
        self.diag: np.ndarray = core.diag  # float64 [n]
        self.dead: np.ndarray = core.dead  # bool [n]
        self.damp: float = float(core.damp)
        self.scale: float = float(core.scale)

    @property
    def H(self) -> np.ndarray:
        """Normalised, dead-fixed, permuted, undamped Hessian: float64 [n, n] (a copy)."""
        return self.core.H

    @property
    def U(self) -> np.ndarray:
        """Upper Cholesky factor of (H + damp·I)⁻¹ in permuted order: float32 [n, n] (a copy)."""
        return self.core.U

    def __repr__(self) -> str:
        return (f"PreparedHessian(n={self.n}, scale={self.scale:.6g}, damp={self.damp:.6g}, "
                f"dead={int(self.dead.sum())})")


def _matrix(H: Hessian | Any, name: str = "H") -> np.ndarray:
    if isinstance(H, Hessian):
        return H.matrix
    return as_square_matrix(H, None, name)


def prepare_hessian(
    H: Hessian | Any,
    percdamp: float = 0.01,
    act_order: bool = True,
    max_percdamp: float = 10.0,
) -> PreparedHessian:
    """Prepare a Hessian (a :class:`Hessian` or a symmetric ``[n, n]`` array) for quantization.

    ``percdamp`` is the damping relative to the mean diagonal; when H + damp·I is not positive
    definite it is multiplied by 10 up to ``max_percdamp`` before :class:`vptq.NumericalError`.
    ``act_order`` sorts columns by decreasing diagonal (stable). ValueError for an
    asymmetric, non-finite or all-zero H or a negative diagonal.
    """
    Hm = _matrix(H)
    pd = check_float(percdamp, "percdamp", 0.0)
    mpd = check_float(max_percdamp, "max_percdamp", 0.0)
    if mpd < pd:
        raise ValueError(f"max_percdamp: expected a value >= percdamp ({pd}), got {mpd}")
    if not isinstance(act_order, (bool, np.bool_)):
        raise TypeError(f"act_order: expected a bool, got {type(act_order).__name__}")
    return PreparedHessian(_core.prepare_hessian(Hm, pd, bool(act_order), mpd))


def proxy_loss(W: Any, W_hat: Any, H: Hessian | Any) -> float:
    """Proxy loss ``tr((W - Ŵ) H (W - Ŵ)ᵀ)`` for W, Ŵ of shape [M, N] and H [N, N] (float64 math)."""
    Wf = as_float_array(W, "W", ndim=2)
    Wq = as_float_array(W_hat, "W_hat", ndim=2)
    if Wq.shape != Wf.shape:
        raise ValueError(f"W_hat: expected the shape of W {Wf.shape}, got {Wq.shape}")
    Hm = hessian_for(H, Wf.shape)
    return float(_core.proxy_loss(Wf, Wq, Hm))


def hessian_for(H: Hessian | Any, w_shape: tuple[int, ...], name: str = "H") -> np.ndarray:
    """H as float64 [N, N] for a weight of shape (M, N); ValueError naming both shapes otherwise."""
    N = w_shape[1]
    if isinstance(H, Hessian):
        if H.in_features != N:
            raise ValueError(f"{name}: Hessian has in_features={H.in_features} but W has shape {tuple(w_shape)}")
        return H.matrix
    Hm = as_square_matrix(H, None, name)
    if Hm.shape != (N, N):
        raise ValueError(f"{name}: expected shape ({N}, {N}) to match W of shape {tuple(w_shape)}, got {Hm.shape}")
    return Hm
