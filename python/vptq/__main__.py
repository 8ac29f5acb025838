"""Command line interface: ``vptq <command>`` or ``python -m vptq <command>``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(synthetic=args.synthetic)
    return 0


def _cmd_info_cpu(_args: argparse.Namespace) -> int:
    import vptq

    for k, v in vptq.cpu_features().items():
        print(f"{k:>10}: {v}")
    print(f"{'threads':>10}: {vptq.get_num_threads()}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vptq", description="VPTQ: vector post-training quantization on CPU")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="compare VPTQ, GPTQ and RTN on real SmolLM2 layers")
    d.add_argument("--synthetic", action="store_true", help="use synthetic layers instead of SmolLM2")
    d.set_defaults(func=_cmd_demo)
    c = sub.add_parser("cpu", help="show the CPU features and SIMD level the kernels use")
    c.set_defaults(func=_cmd_info_cpu)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ValueError, TypeError, OSError) as e:
        print(f"vptq {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
