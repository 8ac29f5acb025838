"""Benchmark vptq's weighted k-means against faiss-cpu on the same data.

Both run Lloyd from k points sampled uniformly from *all* N vectors (faiss's
max_points_per_centroid is raised so it does not subsample), for the same number of
centroid updates, with the same per-vector weights, at 1 and 2 threads. Both results are
scored the same way: weighted inertia of the returned centroids computed with
vptq.kmeans.nearest_centroid. (vptq runs one more assignment pass than faiss so that its
returned assignment matches its returned centroids; that pass is included in its time.)

Data: rows of a synthetic weight-like matrix (low-rank structure + Student-t noise, log-normal
row/column scales) cut into d-vectors of d consecutive rows of one column, as VPTQ does, with
per-column weights (a log-normal "Hessian diagonal") repeated over the column's vectors.

    PYTHONPATH=python VPTQ_EXT_DIR=build/<dir>/cpp python3 bench/bench_kmeans.py
    ... --nearest   # nearest-centroid kernel throughput only (fused vs GEMM tiles vs faiss)

faiss-cpu is a bench-only dependency (pip install faiss-cpu).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import vptq
from vptq import _core
from vptq.quant.kmeans import kmeans, nearest_centroid


def make_data(n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n d-vectors cut from a heavy-tailed, correlated [rows, cols] matrix, and their weights."""
    rng = np.random.default_rng(seed)
    rows = 2048
    cols = max(1, (n * d + rows - 1) // rows)
    low_rank = rng.standard_normal((rows, 16)).astype(np.float32) @ rng.standard_normal((16, cols)).astype(
        np.float32
    )
    w = 0.25 * low_rank + rng.standard_t(3.0, size=(rows, cols)).astype(np.float32)
    w *= rng.lognormal(0.0, 0.3, size=(rows, 1)).astype(np.float32)
    w *= rng.lognormal(0.0, 0.5, size=(1, cols)).astype(np.float32)
    x = np.ascontiguousarray(w.T).reshape(-1, d)[:n]  # vector = d consecutive rows of one column
    h_diag = rng.lognormal(0.0, 1.0, size=cols).astype(np.float32)
    weights = np.repeat(h_diag, rows // d)[:n]
    return np.ascontiguousarray(x, dtype=np.float32), np.ascontiguousarray(weights, dtype=np.float32)


def weighted_inertia(x: np.ndarray, w: np.ndarray, centroids: np.ndarray) -> float:
    """Σ w_i ||x_i - nearest centroid||² (float64 sum), the same scorer for both libraries."""
    _, dist = nearest_centroid(x, centroids)
    return float(np.dot(w.astype(np.float64), dist.astype(np.float64)))


def run_ours(x: np.ndarray, w: np.ndarray, k: int, iters: int, seed: int) -> tuple[np.ndarray, float]:
    t0 = time.perf_counter()
    res = kmeans(x, k, w, max_iter=iters, tol=0.0, seed=seed, init="random")
    return res.centroids, time.perf_counter() - t0


def run_faiss(
    x: np.ndarray, w: np.ndarray, k: int, iters: int, seed: int, init: np.ndarray | None = None
) -> tuple[np.ndarray, float]:
    """faiss Lloyd on all points (no subsampling), from its own random init or from ``init``."""
    import faiss

    km = faiss.Kmeans(
        x.shape[1], k, niter=iters, seed=seed, max_points_per_centroid=x.shape[0] // k + 1, verbose=False
    )
    t0 = time.perf_counter()
    km.train(x, weights=w, init_centroids=init)
    return np.asarray(km.centroids, dtype=np.float32), time.perf_counter() - t0


def bench_kmeans(args: argparse.Namespace) -> None:
    import faiss

    x, w = make_data(args.n, args.d, args.seed)
    print(
        f"data: N={x.shape[0]} d={args.d} k={args.k} iterations={args.iters} weighted=yes "
        f"simd={vptq.simd_level()} faiss={faiss.__version__}"
    )
    print(
        f"{'threads':>7} {'vptq_s':>8} {'faiss_s':>8} {'faiss/vptq':>10} "
        f"{'inertia_vptq':>14} {'inertia_faiss':>14} {'vptq/faiss':>10}"
    )
    c_ours = None
    for threads in args.threads:
        vptq.set_num_threads(threads)
        faiss.omp_set_num_threads(threads)
        c_ours, t_ours = run_ours(x, w, args.k, args.iters, args.seed)
        c_faiss, t_faiss = run_faiss(x, w, args.k, args.iters, args.seed)
        i_ours = weighted_inertia(x, w, c_ours)
        i_faiss = weighted_inertia(x, w, c_faiss)
        print(
            f"{threads:>7} {t_ours:>8.2f} {t_faiss:>8.2f} {t_faiss / t_ours:>10.2f} "
            f"{i_ours:>14.6g} {i_faiss:>14.6g} {i_ours / i_faiss:>10.4f}"
        )
    # Quality at equal footing: faiss started from vptq's initial centroids (max_iter=0 returns them).
    init = kmeans(x, args.k, w, max_iter=0, seed=args.seed).centroids
    c_same, _ = run_faiss(x, w, args.k, args.iters, args.seed, init=init)
    i_ours = weighted_inertia(x, w, c_ours)
    i_same = weighted_inertia(x, w, c_same)
    print(
        f"same initial centroids: inertia_vptq {i_ours:.6g}  inertia_faiss {i_same:.6g}  "
        f"vptq/faiss {i_ours / i_same:.4f}"
    )


def bench_nearest(args: argparse.Namespace) -> None:
    """Single-thread nearest-centroid throughput (pairs/s), best of a few runs."""
    import faiss

    vptq.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(args.seed)
    d = args.d
    print(f"nearest centroid, d={d}, 1 thread, simd={vptq.simd_level()}: Gpairs/s (best of 3)")
    for k in (256, 4096, 65536):
        n = 100_000 if k <= 4096 else 20_000  # faiss has a large per-call cost at small n
        x = rng.standard_normal((n, d)).astype(np.float32)
        c = rng.standard_normal((k, d)).astype(np.float32)
        index = faiss.IndexFlatL2(d)
        index.add(c)
        runs = {
            "fused": lambda x=x, c=c: _core.nearest_centroid(x, c, "fused"),
            "gemm": lambda x=x, c=c: _core.nearest_centroid(x, c, "gemm"),
            "faiss": lambda x=x, index=index: index.search(x, 1),
        }
        out = []
        for name, fn in runs.items():
            best = float("inf")
            for _ in range(3):
                t0 = time.perf_counter()
                fn()
                best = min(best, time.perf_counter() - t0)
            out.append(f"{name} {n * k / best / 1e9:6.2f}")
        print(f"  k={k:6d} n={n:7d}: " + "   ".join(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2_000_000)
    ap.add_argument("--d", type=int, default=8)
    ap.add_argument("--k", type=int, default=4096)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--nearest", action="store_true", help="kernel throughput only")
    args = ap.parse_args()
    if args.nearest:
        bench_nearest(args)
    else:
        bench_kmeans(args)


if __name__ == "__main__":
    main()
