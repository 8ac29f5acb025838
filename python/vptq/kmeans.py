"""Weighted k-means and nearest-centroid search (C++ core, deterministic for a seed).

The objective is the weighted inertia ``sum_i w_i * ||x_i - c_{a_i}||^2``; in VPTQ the
weight of a vector is the Hessian diagonal of its column. Results are bit-identical for any
thread count (``vptq.set_num_threads``) and SIMD level selection only changes rounding of the
internal scores, never the contract (lowest index on exact ties).
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass

import numpy as np

from . import _core

_INITS = ("random", "k-means++")


@dataclass(frozen=True)
class KMeansResult:
    """Result of :func:`kmeans`."""

    centroids: np.ndarray  # [k, d] float32
    assignment: np.ndarray  # [n] int32: index of the centroid of each vector (of the returned centroids)
    inertia: float  # weighted inertia of the returned centroids and assignment
    inertia_history: list[float]  # [iterations + 1]: [0] for the initial centroids
    iterations: int  # Lloyd iterations performed (<= max_iter)


def _as_float32_2d(x: object, name: str) -> np.ndarray:
    """C-contiguous float32 [n, d] copy/view of x with 1 <= d <= 16, n >= 1, all finite."""
    arr = np.asarray(x)
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"{name}: expected a real numeric array, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array [n, d], got shape {arr.shape}")
    if arr.shape[0] < 1:
        raise ValueError(f"{name}: expected at least one row, got shape {arr.shape}")
    if not 1 <= arr.shape[1] <= 16:
        raise ValueError(f"{name}: expected 1 <= d <= 16 columns, got shape {arr.shape}")
    with np.errstate(over="ignore"):  # out-of-range float64 -> inf, rejected below
        out = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(out).all():
        raise ValueError(f"{name}: expected finite values (after conversion to float32), got NaN or Inf")
    return out


def _as_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    return operator.index(value)


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
        x: [n, d] real array, 1 <= d <= 16, finite (converted to float32).
        k: number of clusters, 1 <= k <= n.
        weights: [n] finite weights >= 0 (zero allowed), or None for all ones.
        max_iter: maximum number of Lloyd iterations (>= 0).
        tol: stop when the relative decrease of the inertia is <= tol (>= 0).
        seed: seed of the initialisation (int in [0, 2**64)).
        init: "random" (k distinct vectors sampled uniformly) or "k-means++" (weighted,
            on a sample of at most max(65536, k) vectors).

    Returns:
        KMeansResult; empty or zero-weight clusters are re-seeded with the farthest point of
        the cluster with the largest weighted error.

    Raises:
        TypeError: non-numeric arrays, non-int k/max_iter/seed, non-str init.
        ValueError: bad shapes, NaN/Inf, negative weights, k out of range, bad options.
    """
    xa = _as_float32_2d(x, "x")
    n = xa.shape[0]
    k = _as_int(k, "k")
    if not 1 <= k <= n:
        raise ValueError(f"k: expected 1 <= k <= n = {n}, got {k}")
    wa = None
    if weights is not None:
        w = np.asarray(weights)
        if w.dtype.kind not in "fiu":
            raise TypeError(f"weights: expected a real numeric array, got dtype {w.dtype}")
        if w.shape != (n,):
            raise ValueError(f"weights: expected shape ({n},), got {w.shape}")
        with np.errstate(over="ignore"):
            wa = np.ascontiguousarray(w, dtype=np.float32)
        if not np.isfinite(wa).all():
            raise ValueError("weights: expected finite values, got NaN or Inf")
        if (wa < 0).any():
            raise ValueError(f"weights: expected values >= 0, got min {float(wa.min())}")
    max_iter = _as_int(max_iter, "max_iter")
    if max_iter < 0:
        raise ValueError(f"max_iter: expected >= 0, got {max_iter}")
    if isinstance(tol, bool) or not isinstance(tol, (int, float, np.floating, np.integer)):
        raise TypeError(f"tol: expected a float, got {type(tol).__name__}")
    tol = float(tol)
    if not (math.isfinite(tol) and tol >= 0):
        raise ValueError(f"tol: expected a finite value >= 0, got {tol}")
    seed = _as_int(seed, "seed")
    if not 0 <= seed < 2**64:
        raise ValueError(f"seed: expected 0 <= seed < 2**64, got {seed}")
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
        x: [n, d] real array (n may be 0), finite.
        centroids: [k, d] real array, k >= 1, 1 <= d <= 16, finite.

    Returns:
        (idx int32[n], dist float32[n]): index of the nearest centroid (lowest index on exact
        ties) and the exact squared distance to it (computed in float32).
    """
    ca = _as_float32_2d(centroids, "centroids")
    arr = np.asarray(x)
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"x: expected a real numeric array, got dtype {arr.dtype}")
    if arr.ndim != 2 or arr.shape[1] != ca.shape[1]:
        raise ValueError(f"x: expected shape (n, {ca.shape[1]}), got {arr.shape}")
    with np.errstate(over="ignore"):
        xa = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(xa).all():
        raise ValueError("x: expected finite values (after conversion to float32), got NaN or Inf")
    idx, dist = _core.nearest_centroid(xa, ca)
    return idx, dist
