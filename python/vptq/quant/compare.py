"""Side-by-side comparison of quantizers on single layers (the same weights and Hessian for all).

:func:`synthetic_layers` makes layers that need no model (correlated activations with a few strong
channels, heavy-tailed weights); :func:`compare` runs every method on every layer and records bits
per weight and the relative proxy loss tr(ΔW H ΔWᵀ) / tr(W H Wᵀ); :func:`summary` condenses the
rows per method. ``vptq demo --synthetic``, ``bench/bench_quality.py`` and the walkthrough notebook
use it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..config import QuantConfig
from .baselines import gptq, rtn
from .hessian import proxy_loss
from .quantize import quantize_weight

__all__ = ["Layer", "Row", "compare", "default_methods", "summary", "synthetic_layers"]


@dataclass
class Layer:
    """One layer's weight and the Hessian of its inputs."""

    name: str
    W: np.ndarray  #: [out_features, in_features] float32
    H: np.ndarray  #: [in_features, in_features] float64, E[x xᵀ]


@dataclass
class Row:
    """One method on one layer."""

    layer: str
    method: str
    bits_per_weight: float
    relative_proxy_loss: float  #: tr(ΔW H ΔWᵀ) / tr(W H Wᵀ)
    seconds: float


def synthetic_layers(n: int = 2, M: int = 512, N: int = 512, seed: int = 0) -> list[Layer]:
    """``n`` layers [M, N]: correlated activations with a few strong channels, heavy-tailed weights
    with column scales (seeded)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        A = rng.standard_normal((N, N)) / np.sqrt(N)
        X = rng.standard_normal((4 * N, N)) @ (np.eye(N) + A)
        X[:, rng.choice(N, N // 32, replace=False)] *= 8.0
        W = (0.02 * rng.standard_t(4, (M, N)) * (0.5 + rng.random(N))).astype(np.float32)
        out.append(Layer(f"synthetic.{i}", W, X.T @ X / len(X)))
    return out


def default_methods(vptq_configs: Sequence[str] = ("v8-k256-256",)) -> dict[str, Callable[[Layer], Any]]:
    """name -> function(layer) returning an object with ``bits_per_weight`` and ``proxy_loss``:
    RTN and GPTQ 2-bit g128, plain VQ of the first config (no error feedback), VPTQ of each config."""
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
    """Every method on every layer; ``progress`` gets one line per (layer, method)."""
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
    """(method, mean bits/weight, geometric mean over layers of loss / ``baseline``'s loss)."""
    by_layer = {(r.layer, r.method): r for r in rows}
    out = []
    for m in dict.fromkeys(r.method for r in rows):
        mine = [r for r in rows if r.method == m]
        ratios = [r.relative_proxy_loss / by_layer[(r.layer, baseline)].relative_proxy_loss for r in mine]
        out.append((m, float(np.mean([r.bits_per_weight for r in mine])),
                    math.exp(float(np.mean(np.log(ratios))))))
    return out
