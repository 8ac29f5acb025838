"""Weighted k-means and nearest-centroid search (C++ core, deterministic for a seed).

The objective is the weighted inertia ``sum_i w_i * ||x_i - c_{a_i}||^2``; in VPTQ the
weight of a vector is the Hessian diagonal of its column. Results are bit-identical for any
thread count (``vptq.set_num_threads``) and SIMD level selection only changes rounding of the
internal scores, never the contract (lowest index on exact ties).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import _core
from .._arrays import as_float_array, check_float, check_int

_INITS = ("random", "k-means++")


@dataclass(frozen=True)
class KMeansResult:
    """Result of :func:`kmeans`."""

    centroids: np.ndarray  # [k, d] float32
    assignment: np.ndarray  # [n] int32: index of the centroid of each vector (of the returned centroids)
    inertia: float  # weighted inertia of the returned centroids and assignment
    inertia_history: list[float]  # [iterations + 1]: [0] for the initial centroids
    iterations: int  # Lloyd iterations performed (<= max_iter)


def _check_d(a: np.ndarray, name: str) -> None:
    if not 1 <= a.shape[1] <= 16:
        raise ValueError(f"{name}: expected 1 <= d <= 16 columns, got shape {a.shape}")


def kmeans(
    x: np.ndarray,
    k: int,
    weights: np.ndarray | None = None,
    *,
    max_iter: int = 100,
    tol: float = 1e-5,
    seed: int = 0,
    init: str = "random",
) -> KMeansResult:
    """Weighted k-means (Lloyd) of the rows of ``x``.

    Args:
        x: [n, d] float array (numpy or torch), 1 <= d <= 16, finite (converted to float32).
        k: number of clusters, 1 <= k <= n.
        weights: [n] finite float weights >= 0 (zero allowed), or None for all ones.
        max_iter: maximum number of Lloyd iterations (>= 0).
        tol: stop when the relative decrease of the inertia is <= tol (>= 0).
        seed: seed of the initialisation (int in [0, 2**64)).
        init: "random" (k distinct vectors sampled uniformly) or "k-means++" (weighted,
            on a sample of at most max(65536, k) vectors).

    Returns:
        KMeansResult; empty or zero-weight clusters are re-seeded with the farthest point of
        the cluster with the largest weighted error.

    Raises:
        TypeError: non-float arrays, non-int k/max_iter/seed, non-str init.
        ValueError: bad shapes, NaN/Inf, negative weights, k out of range, bad options.
    """
    xa = as_float_array(x, "x", ndim=2)
    _check_d(xa, "x")
    n = xa.shape[0]
    k = check_int(k, "k")
    if not 1 <= k <= n:
        raise ValueError(f"k: expected 1 <= k <= n = {n}, got {k}")
    wa = None
    if weights is not None:
        wa = as_float_array(weights, "weights", ndim=1)
        if wa.shape != (n,):
            raise ValueError(f"weights: expected shape ({n},), got {wa.shape}")
        if (wa < 0).any():
            raise ValueError(f"weights: expected values >= 0, got min {float(wa.min())}")
    max_iter = check_int(max_iter, "max_iter", 0, 2**31 - 1)
    tol = check_float(tol, "tol", 0.0)
    seed = check_int(seed, "seed", 0, 2**64 - 1)
    if not isinstance(init, str):
        raise TypeError(f"init: expected a str, got {type(init).__name__}")
    if init not in _INITS:
        raise ValueError(f"init: expected one of {_INITS}, got {init!r}")
    centroids, assignment, history, iterations = _core.kmeans(
        xa, k, wa, max_iter=max_iter, tol=tol, seed=seed, kmeanspp=init == "k-means++"
    )
    history = [float(v) for v in history]
    return KMeansResult(
        centroids=centroids,
        assignment=assignment,
        inertia=history[-1],
        inertia_history=history,
        iterations=int(iterations),
    )


def nearest_centroid(x: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid (squared L2) of every row of ``x``.

    Args:
        x: [n, d] float array (n may be 0), finite.
        centroids: [k, d] float array, k >= 1, 1 <= d <= 16, finite.

    Returns:
        (idx int32[n], dist float32[n]): index of the nearest centroid (lowest index on exact
        ties) and the exact squared distance to it (computed in float32).
    """
    ca = as_float_array(centroids, "centroids", ndim=2)
    _check_d(ca, "centroids")
    xa = as_float_array(x, "x", ndim=2, allow_empty=True)
    if xa.shape[1] != ca.shape[1]:
        raise ValueError(f"x: expected shape (n, {ca.shape[1]}), got {xa.shape}")
    idx, dist = _core.nearest_centroid(xa, ca)
    return idx, dist
