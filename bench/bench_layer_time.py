"""Wall-clock and peak RSS of quantizing one 4096x4096 layer (synthetic, correlated Hessian).

Each configuration runs in its own subprocess (so peak RSS is its own); GPTQ 2-bit g128 on the
same layer in the same run is the baseline of the printed time ratios.

    python bench/bench_layer_time.py [--size 4096] [--threads 2] [--configs v8-k256-256 v8-k65536-0]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def child(size: int, threads: int, method: str, kmeans_iters: int) -> None:
    import resource

    import numpy as np

    import vptq

    vptq.set_num_threads(threads)
    rng = np.random.default_rng(0)
    N = M = size
    mix = (np.eye(N) + rng.standard_normal((N, N)) / np.sqrt(N)).astype(np.float32)
    X = rng.standard_normal((2 * N, N)).astype(np.float32) @ mix
    X[:, :: 64] *= 8
    h = vptq.Hessian(N)
    h.add_batch(X)
    del X, mix
    W = (0.02 * rng.standard_t(4, (M, N))).astype(np.float32)
    t = time.perf_counter()
    if method == "gptq":
        q = vptq.gptq(W, h, 2, 128)
    else:
        q = vptq.quantize_weight(W, h, vptq.QuantConfig.preset(method, kmeans_iters=kmeans_iters))
    dt = time.perf_counter() - t
    base = vptq.proxy_loss(W, np.zeros_like(W), h)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"method": method, "seconds": dt, "peak_rss_mb": rss, "bits": q.bits_per_weight,
                      "rel_loss": q.proxy_loss / base}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--kmeans-iters", type=int, default=100)
    ap.add_argument("--configs", nargs="+", default=["v8-k256-256", "v8-k65536-0"])
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.size, args.threads, args.child, args.kmeans_iters)
        return
    results = []
    for method in ["gptq", *args.configs]:
        out = subprocess.run([sys.executable, __file__, "--child", method, "--size", str(args.size),
                              "--threads", str(args.threads), "--kmeans-iters", str(args.kmeans_iters)],
                             check=True, capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        results.append(r)
        print(f"{r['method']:<16} {r['seconds']:8.1f} s  peak RSS {r['peak_rss_mb']:7.0f} MB  "
              f"{r['bits']:.3f} b/w  rel. proxy loss {r['rel_loss']:.4g}", flush=True)
    base = results[0]["seconds"]
    print(f"\n{args.size}x{args.size}, {args.threads} threads; time / GPTQ-2b time:")
    for r in results[1:]:
        print(f"  {r['method']:<16} {r['seconds'] / base:6.1f}x")


if __name__ == "__main__":
    main()
