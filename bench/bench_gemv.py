"""Benchmark of the fused VPTQ GEMV (vptq.QuantizedLinear) against numpy/OpenBLAS fp32 and our own
dequantize-then-BLAS, optionally ggml's test-backend-ops MUL_MAT (iq2_xxs, q2_K).

    python bench/bench_gemv.py                       # full table, 1 and 2 threads (one subprocess each)
    python bench/bench_gemv.py --quick               # 4096x4096 only
    python bench/bench_gemv.py --ggml /work/ggml-build   # add ggml columns (dir with bin/test-backend-ops)

Random indices/codebooks (kernel speed does not depend on the values; codebooks are rounded to
fp16 like a real checkpoint, so large codebooks use the plan's exact fp16 storage). Times are the
best of several repetitions, per call. Ratios: time(OpenBLAS fp32 W @ x) / time(ours) (> 1 = faster).
Thread counts are set at process start (OPENBLAS_NUM_THREADS / OMP_NUM_THREADS) in a subprocess
per thread count, plus vptq.set_num_threads.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

SHAPES = [(4096, 4096), (11008, 4096), (4096, 11008)]  # (out_features M, in_features N)
BATCHES = [1, 4, 16]
# name -> (v, k1, k2, outlier_percent, v0, k0)
CONFIGS: dict[str, tuple[int, int, int, float, int, int]] = {
    "v8-k256-256": (8, 256, 256, 0.0, 0, 0),
    "v6-k4096-0": (6, 4096, 0, 0.0, 0, 0),
    "v8-k65536-0": (8, 65536, 0, 0.0, 0, 0),
    "v16-k65536-65536": (16, 65536, 65536, 0.0, 0, 0),
    "v12-k4096-4096": (12, 4096, 4096, 0.0, 0, 0),
    "v12-k4096-4096+o1%": (12, 4096, 4096, 1.0, 4, 4096),
}
TWO_BIT = ["v8-k256-256", "v6-k4096-0", "v8-k65536-0", "v12-k4096-4096", "v16-k65536-65536"]


def timed(fn: Callable[[], Any], budget: float = 0.25, min_reps: int = 3,
          max_reps: int = 200) -> tuple[float, float]:
    """(best, mean) wall time of fn() in seconds over N calls (N adapted to ~budget seconds), after
    one untimed call. Best-of compares our kernels with OpenBLAS; the mean is the statistic
    ggml's test-backend-ops prints, so comparisons with ggml use it."""
    fn()
    best = float("inf")
    t_start = time.perf_counter()
    n = 0
    while n < min_reps or (time.perf_counter() - t_start < budget and n < max_reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
        n += 1
    return best, (time.perf_counter() - t_start) / n


def best_time(fn: Callable[[], Any], budget: float = 0.25, min_reps: int = 3, max_reps: int = 200) -> float:
    """Best-of-N wall time of fn() in seconds (see timed)."""
    return timed(fn, budget, min_reps, max_reps)[0]


def make_layer(M: int, N: int, cfg: tuple[int, int, int, float, int, int], seed: int) -> Any:
    import vptq  # noqa: F401  (VPTQ_EXT_DIR hook)
    from vptq import _core
    from vptq.runtime.layers import QuantizedLinear

    v, k1, k2, opct, v0, k0 = cfg
    rng = np.random.default_rng(seed)
    L = _core.make_layout(M, N, v, k1, k2, opct, v0, k0, 1)
    R, gs = L["num_indices"], L["group_size"]

    def cb(*shape: int) -> np.ndarray:
        return rng.uniform(0, 1, shape).astype(np.float16).astype(np.float32)

    kw: dict[str, Any] = {}
    if k2:
        kw["res_centroids"] = cb(1, k2, v)
        kw["res_indices"] = rng.integers(0, k2, (1, R, gs), dtype=np.uint16)
    if L["k0"]:
        kw["outlier_centroids"] = cb(L["k0"], L["v0"])
        kw["outlier_indices"] = rng.integers(0, L["k0"], (L["num_outlier_indices"], L["outlier_size"]),
                                             dtype=np.uint16)
    return QuantizedLinear.from_arrays(
        L, cb(1, k1, v), rng.integers(0, k1, (1, R, gs), dtype=np.uint16),
        perm=rng.permutation(N).astype(np.int64), scale=cb(N), norm_bias=cb(N) - np.float32(0.5), **kw)


def run_worker(args: argparse.Namespace) -> None:
    """Runs in a subprocess whose BLAS/OpenMP thread count was fixed at start; prints JSON lines."""
    import vptq

    threads = args.worker_threads
    vptq.set_num_threads(threads)
    shapes = SHAPES[:1] if args.quick else SHAPES
    rng = np.random.default_rng(0)
    for M, N in shapes:
        W = rng.standard_normal((M, N), dtype=np.float32)
        for B in BATCHES:
            x = rng.standard_normal((B, N), dtype=np.float32)
            xT = np.ascontiguousarray(x.T)
            t_blas = best_time(lambda W=W, xT=xT: W @ xT)
            print(json.dumps({"kind": "blas", "M": M, "N": N, "B": B, "threads": threads, "t": t_blas}), flush=True)
        del W
        for name in args.configs:
            q = make_layer(M, N, CONFIGS[name], seed=1)
            # dequantize-then-BLAS: time of the full dequantization (once per layer) + the dense product
            t_deq = best_time(q.dequantize, budget=0.0, min_reps=2)
            W_hat = q.dequantize()
            for B in BATCHES:
                x = rng.standard_normal((B, N), dtype=np.float32)
                xT = np.ascontiguousarray(x.T)
                t_ours, t_mean = timed(lambda q=q, x=x: q(x))
                t_mm = best_time(lambda W_hat=W_hat, xT=xT: W_hat @ xT)
                print(json.dumps({"kind": "vq", "cfg": name, "M": M, "N": N, "B": B, "threads": threads,
                                  "t": t_ours, "t_mean": t_mean, "t_deq_blas": t_deq + t_mm, "storage": q.codebook_storage,
                                  "bytes": q.kernel_bytes}), flush=True)
            del q, W_hat
    if args.model and threads == 1:
        # Model-sized run: cycle through enough distinct layers to exceed L3 (32 MB).
        for name in args.model_configs:
            layers = [make_layer(4096, 4096, CONFIGS[name], seed=100 + i) for i in range(args.model_layers)]
            x = rng.standard_normal((1, 4096), dtype=np.float32)

            def all_layers(layers: list[Any] = layers, x: np.ndarray = x) -> None:
                for q in layers:
                    q(x)

            t = best_time(all_layers, budget=1.0, min_reps=3) / len(layers)
            total = sum(q.kernel_bytes for q in layers)
            print(json.dumps({"kind": "model", "cfg": name, "layers": len(layers), "t": t, "total_bytes": total,
                              "bytes": layers[0].kernel_bytes, "threads": threads}), flush=True)
            del layers


# ---------------------------------------------------------------- ggml
GGML_RE = re.compile(r"MUL_MAT\(type_a=(\w+),type_b=f32,m=(\d+),n=(\d+),k=(\d+).*?:\s+\d+ runs\s+-\s+([\d.]+) us/run")


def ggml_times(path: str | None, threads: int) -> tuple[dict[tuple[str, int, int, int], float], str]:
    """{(type, m, n, k): seconds} from `test-backend-ops perf -o MUL_MAT` of a ggml build dir."""
    if not path:
        return {}, "ggml column skipped (no --ggml PATH given)"
    exe = None
    for cand in (Path(path) / "bin" / "test-backend-ops", Path(path) / "test-backend-ops"):
        if cand.is_file():
            exe = cand
            break
    if exe is None:
        return {}, f"ggml column skipped: no test-backend-ops under {path}"
    # GGML_N_THREADS / VPTQ_ONLY_LOCAL are read by the locally patched test-backend-ops (thread count,
    # and only the LLaMA-7B shapes); an unpatched build runs its default cases on all cores.
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), GGML_N_THREADS=str(threads), VPTQ_ONLY_LOCAL="1")
    out: dict[tuple[str, int, int, int], float] = {}
    try:
        r = subprocess.run([str(exe), "perf", "-o", "MUL_MAT", "-b", "CPU"],
                           capture_output=True, text=True, env=env, timeout=1800, check=False)
        text = r.stdout + r.stderr
    except (OSError, subprocess.TimeoutExpired) as e:
        return {}, f"ggml column skipped: {e}"
    for m in GGML_RE.finditer(text):
        out[(m.group(1), int(m.group(2)), int(m.group(3)), int(m.group(4)))] = float(m.group(5)) * 1e-6
    return out, f"ggml: {exe} ({len(out)} MUL_MAT results)"


def ggml_lookup(g: dict[tuple[str, int, int, int], float], typ: str, M: int, N: int, B: int) -> float | None:
    """ggml's MUL_MAT has m = rows of A (= our M), k = shared dim (= N), n = batch."""
    return g.get((typ, M, B, N))


# ---------------------------------------------------------------- driver
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="4096x4096 only")
    ap.add_argument("--threads", type=int, nargs="*", default=[1, 2])
    ap.add_argument("--configs", nargs="*", default=list(CONFIGS))
    ap.add_argument("--ggml", default=None, help="ggml build dir containing (bin/)test-backend-ops")
    ap.add_argument("--no-model", dest="model", action="store_false", help="skip the model-sized run")
    ap.add_argument("--model-layers", type=int, default=32)
    ap.add_argument("--model-configs", nargs="*", default=["v8-k256-256", "v8-k65536-0"])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--worker-threads", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        run_worker(args)
        return

    import vptq

    print(f"vptq {vptq.__version__}  cpu_features: {vptq.cpu_features()}")
    results: list[dict[str, Any]] = []
    for t in args.threads:
        env = dict(os.environ, OPENBLAS_NUM_THREADS=str(t), OMP_NUM_THREADS=str(t), MKL_NUM_THREADS=str(t))
        cmd = [sys.executable, __file__, "--worker", "--worker-threads", str(t), "--configs", *args.configs,
               "--model-layers", str(args.model_layers), "--model-configs", *args.model_configs]
        if args.quick:
            cmd.append("--quick")
        if not args.model:
            cmd.append("--no-model")
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if p.returncode != 0:
            print(p.stderr, file=sys.stderr)
            raise SystemExit(f"worker for {t} thread(s) failed")
        results += [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]

    for t in args.threads:
        g, msg = ggml_times(args.ggml, t)
        print(f"\n=== {t} thread(s) === times in ms per call (best of N); x = speed-up vs OpenBLAS fp32 "
              "(higher is better)")
        if g:
            print("ggml columns: test-backend-ops' mean per call, and ours/ggml = ggml time / our MEAN time "
                  "(same statistic; > 1 = ours faster). bench/bench_vs_ggml.cpp compares in one process.")
        print(msg)
        blas = {(r["M"], r["N"], r["B"]): r["t"] for r in results if r["kind"] == "blas" and r["threads"] == t}
        hdr = (f"{'shape MxN':>12} {'B':>3} {'config':>19} {'cb':>4} {'BLAS fp32':>10} {'deq+BLAS':>10} "
               f"{'ours':>8} {'x':>6} {'GB/s':>6}")
        if g:
            hdr += f" {'iq2_xxs':>8} {'ours/':>6} {'q2_K':>8} {'ours/':>6}"
        print(hdr)
        for r in results:
            if r["kind"] != "vq" or r["threads"] != t:
                continue
            tb = blas[(r["M"], r["N"], r["B"])]
            line = (f"{r['M']:>5}x{r['N']:<6} {r['B']:>3} {r['cfg']:>19} {r['storage']:>4} {tb * 1e3:>10.3f} "
                    f"{r['t_deq_blas'] * 1e3:>10.2f} {r['t'] * 1e3:>8.3f} {tb / r['t']:>6.2f} "
                    f"{r['bytes'] / r['t'] / 1e9:>6.2f}")
            if g:
                for typ in ("iq2_xxs", "q2_K"):
                    tg = ggml_lookup(g, typ, r["M"], r["N"], r["B"])
                    line += f" {tg * 1e3:>8.3f} {tg / r['t_mean']:>6.2f}" if tg else f" {'-':>8} {'-':>6}"
            print(line)
    for r in results:
        if r["kind"] == "model":
            print(f"\nmodel-sized run ({r['threads']} thread): {r['layers']} distinct 4096x4096 {r['cfg']} layers "
                  f"({r['total_bytes'] / 2**20:.0f} MiB of indices+codebooks), batch 1: {r['t'] * 1e3:.3f} ms/layer, "
                  f"{r['bytes'] / r['t'] / 1e9:.2f} GB/s effective")
    # target summary: batch 1, 1 thread, 4096x4096
    if 1 in args.threads:
        rows = [r for r in results if r["kind"] == "vq" and r["threads"] == 1 and r["M"] == 4096
                and r["N"] == 4096 and r["B"] == 1 and r["cfg"] in TWO_BIT]
        if rows:
            tb = next(x["t"] for x in results if x["kind"] == "blas" and x["threads"] == 1 and x["M"] == 4096
                      and x["N"] == 4096 and x["B"] == 1)
            print("\n2-bit configs, 4096x4096, batch 1, 1 thread: "
                  + ", ".join(f"{r['cfg']} {r['t'] * 1e3:.3f} ms ({tb / r['t']:.2f}x)" for r in rows))


if __name__ == "__main__":
    main()
