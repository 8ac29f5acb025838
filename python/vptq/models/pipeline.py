"""Whole-model quantization: GPTQ-style block-sequential calibration and quantization.

The inputs of decoder block 0 (hidden states and the keyword arguments the model passes to
its blocks: attention mask, position ids, rotary embeddings) are captured once; then block by
block the block's Linears get their input Hessians from forward hooks, are quantized (VPTQ,
GPTQ or RTN) and their weights replaced by the dequantized matrices, and the block's outputs
become the next block's inputs. Memory is bounded by one block's activations over the
calibration segments.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import os
import re
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..config import QuantConfig
from ..errors import InputError
from ..quant.baselines import ScalarQuantized, gptq, rtn
from ..quant.hessian import Hessian, proxy_loss
from ..quant.quantize import QuantizedWeight, quantize_weight
from .blockwise import BlockFinetune, block_norm_parameters, finetune_block

__all__ = ["METHODS", "check_config_fits", "decoder_blocks", "quantize_model", "resolve_config"]

METHODS = ("vptq", "gptq", "rtn")
_BLOCK_FILE = "block_{:04d}.npz"
_META_KEY = "__meta__"
_NORMS_KEY = "__norms__"  # resume-file key prefix of a fine-tuned block's norm weights


class _Captured(Exception):
    """Raised by the pre-hook on block 0 to stop the forward pass once its inputs are known."""


# ------------------------------------------------------------------------------------------- helpers
def decoder_blocks(model: Any) -> tuple[str, list[Any]]:
    """(prefix, blocks) of a decoder model: the first ModuleList named ``…layers`` (``model.layers``)."""
    import torch

    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.ModuleList) and re.fullmatch(r"(.*\.)?layers", name) and len(mod) > 0:
            return name, list(mod)
    raise InputError(f"unsupported architecture {type(model).__name__}: no decoder block list "
                     "(a ModuleList named 'layers') found")


def _block_linears(block: Any, prefix: str) -> dict[str, Any]:
    import torch

    return {f"{prefix}.{n}": m for n, m in block.named_modules() if isinstance(m, torch.nn.Linear)}


def resolve_config(config: QuantConfig | str | Mapping[str, QuantConfig | str] | None,
                   name: str) -> QuantConfig | None:
    """The QuantConfig for Linear ``name``: the config itself, a preset, or the first fnmatch
    pattern of a mapping that matches the full name (None when no pattern matches)."""
    if config is None:
        return None
    if isinstance(config, QuantConfig):
        return config
    if isinstance(config, str):
        return QuantConfig.preset(config)
    if isinstance(config, Mapping):
        for pattern, c in config.items():
            if not isinstance(pattern, str):
                raise TypeError(f"config: expected str patterns, got {type(pattern).__name__}")
            if fnmatch.fnmatchcase(name, pattern):
                return resolve_config(c, name)
        return None
    raise TypeError(f"config: expected a QuantConfig, a preset name or a mapping pattern -> config, "
                    f"got {type(config).__name__}")


def _check_config(config: Any) -> None:
    """Validate every config in ``config`` up front (bad presets fail before any work)."""
    if isinstance(config, Mapping):
        if not config:
            raise InputError("config: expected at least one pattern, got an empty mapping")
        for c in config.values():
            _check_config(c)
    elif config is not None:
        resolve_config(config, "")


def check_config_fits(config: QuantConfig, out_features: int, in_features: int) -> None:
    """ValueError saying why ``config`` cannot quantize a W[out_features, in_features] (column groups
    that do not divide the columns, fewer vectors than centroids to fit a codebook, ...), before
    any Hessian is collected."""
    from .. import _core

    M, N = int(out_features), int(in_features)
    try:
        L = _core.make_layout(M, N, config.vector_len, config.num_centroids, config.num_res_centroids,
                              float(config.outlier_percent),
                              config.outlier_vector_len if config.has_outliers else 0,
                              config.outlier_centroids if config.has_outliers else 0, config.group_num)
    except ValueError as e:
        raise InputError(f"config {config.name} does not fit a {M}x{N} weight: {e}") from e
    n_vec = L["group_size"] * -(-M // L["v"])
    for what, k in (("centroids", L["k1"]), ("residual centroids", L["k2"])):
        if k > n_vec:
            raise InputError(f"config {config.name} does not fit a {M}x{N} weight: {k} {what} but only "
                             f"{n_vec} vectors per group (use fewer centroids or fewer groups)")
    if L["k0"] > 0 and L["outlier_size"] > 0:
        n_out = L["outlier_size"] * -(-M // L["v0"])
        if L["k0"] > n_out:
            raise InputError(f"config {config.name} does not fit a {M}x{N} weight: {L['k0']} outlier "
                             f"centroids but only {n_out} outlier vectors")


def _segments(tokenizer_or_segments: Any, calib_text: str | None, n_segments: int, seq_len: int,
              seed: int) -> np.ndarray:
    if isinstance(tokenizer_or_segments, np.ndarray) or hasattr(tokenizer_or_segments, "numpy"):
        seg = tokenizer_or_segments
        seg = seg.detach().cpu().numpy() if hasattr(seg, "detach") else seg
        if seg.ndim != 2 or seg.dtype.kind not in "iu" or seg.size == 0:
            raise InputError(f"segments: expected a non-empty 2-D integer array [n, seq_len], got "
                             f"shape {seg.shape} dtype {seg.dtype}")
        return np.ascontiguousarray(seg, dtype=np.int64)
    from .calib import default_text, token_segments

    text = default_text() if calib_text is None else calib_text
    if not isinstance(text, str) or not text.strip():
        raise InputError("calib_text: expected a non-empty string")
    return token_segments(tokenizer_or_segments, text, n_segments, seq_len, seed)


def _config_json(config: Any) -> Any:
    if isinstance(config, QuantConfig):
        return config.to_dict()
    if isinstance(config, Mapping):
        return [[k, _config_json(v)] for k, v in config.items()]
    return config


def _fingerprint(model: Any, segments: np.ndarray, config: Any, method: str, bits: int, group_size: int,
                 sequential: bool, finetune: BlockFinetune | None = None, batch_size: int = 0) -> str:
    h = hashlib.sha256()
    h.update(segments.tobytes())
    _, blocks = decoder_blocks(model)
    for _, p in sorted(blocks[0].named_parameters()):  # identifies the source weights cheaply
        h.update(p.detach().float().contiguous().numpy().tobytes())
    key: list[Any] = [type(model).__name__, _config_json(config), method, bits, group_size, sequential]
    if finetune is not None:  # fine-tuning steps on the calibration batches: their size matters too
        key += [{"block_finetune": finetune.to_dict(), "batch_size": batch_size}]
    h.update(json.dumps(key, sort_keys=True).encode())
    return h.hexdigest()


def _output(out: Any) -> Any:
    return out[0] if isinstance(out, tuple) else out


# ---------------------------------------------------------------------------------------- resume io
def _save_block(path: Path, fingerprint: str, layers: dict[str, Any], rows: list[dict[str, Any]],
                norms: Mapping[str, np.ndarray] | None = None) -> None:
    """Write one finished block atomically (temp file + rename) as a single .npz; ``norms``: the
    block's norm weights by full name (fine-tuned blocks), stored exactly (float32)."""
    arrays: dict[str, np.ndarray] = {}
    for name, a in (norms or {}).items():
        arrays[f"{_NORMS_KEY}/{name}"] = np.ascontiguousarray(a, dtype=np.float32)
    meta: dict[str, Any] = {"fingerprint": fingerprint, "rows": rows, "layers": {}}
    for name, q in layers.items():
        if isinstance(q, QuantizedWeight):
            for k, a in q.state_dict("float32").items():
                arrays[f"{name}/{k}"] = a
            meta["layers"][name] = {"kind": "vptq", "layer_config": q.layer_config(),
                                    "config": q.config.to_dict() if q.config is not None else None,
                                    "proxy_loss": q.proxy_loss, "relative_proxy_loss": q.relative_proxy_loss}
        else:
            for k in ("codes", "scale", "zero", "g_idx"):
                arrays[f"{name}/{k}"] = getattr(q, k)
            meta["layers"][name] = {"kind": "scalar", "bits": q.bits, "group_size": q.group_size,
                                    "method": q.method, "proxy_loss": q.proxy_loss, "damp": q.damp}
    arrays[_META_KEY] = np.array(json.dumps(meta))
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}.npz"
    try:
        with tmp.open("wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _load_block(path: Path, fingerprint: str) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, np.ndarray]]:
    """(layers, report rows, norm weights by full name) of a block saved by :func:`_save_block`."""
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
        meta = json.loads(str(data.pop(_META_KEY)))
    except (OSError, ValueError, KeyError) as e:
        raise InputError(f"corrupt resume file {path}: {e}") from e
    if meta.get("fingerprint") != fingerprint:
        raise InputError(f"resume file {path} was written for a different model, calibration data or "
                         "settings; use another resume_dir or delete it")
    norms = {k.split("/", 1)[1]: a for k, a in data.items() if k.startswith(f"{_NORMS_KEY}/")}
    layers: dict[str, Any] = {}
    for name, m in meta["layers"].items():
        t = {k.split("/", 1)[1]: a for k, a in data.items() if k.split("/", 1)[0] == name}
        if m["kind"] == "vptq":
            q = QuantizedWeight.from_state_dict(t, m["layer_config"])
            q.config = QuantConfig.from_dict(m["config"]) if m["config"] is not None else None
            q.proxy_loss, q.relative_proxy_loss = m["proxy_loss"], m["relative_proxy_loss"]
        else:
            q = ScalarQuantized(codes=t["codes"], scale=t["scale"], zero=t["zero"], g_idx=t["g_idx"],
                                bits=m["bits"], group_size=m["group_size"], method=m["method"],
                                proxy_loss=m["proxy_loss"], damp=m["damp"])
        layers[name] = q
    return layers, meta["rows"], norms


# -------------------------------------------------------------------------------------- quantization
def _quantize_linear(name: str, W: np.ndarray, H: Hessian, method: str, cfg: QuantConfig | None, bits: int,
                     group_size: int) -> tuple[Any, dict[str, Any]]:
    t0 = time.perf_counter()
    try:
        if method == "vptq":
            q: Any = quantize_weight(W, H, cfg)
            q.config = cfg
            rel = q.relative_proxy_loss
        else:
            Hm = H.matrix
            gs = group_size if group_size == -1 else min(group_size, W.shape[1])
            q = gptq(W, Hm, bits, gs) if method == "gptq" else rtn(W, bits, gs, H=Hm)
            ref = proxy_loss(W, np.zeros_like(W), Hm)
            rel = q.proxy_loss / ref if ref > 0 else None
    except (ValueError, TypeError) as e:
        raise InputError(f"layer {name} {tuple(W.shape)}: {e}") from e
    row = {
        "name": name,
        "shape": list(W.shape),
        "method": method,
        "config": cfg.name if cfg is not None and method == "vptq" else f"{bits}bit-g{group_size}",
        "bits_per_weight": float(q.bits_per_weight),
        "proxy_loss": None if q.proxy_loss is None else float(q.proxy_loss),
        "relative_proxy_loss": None if rel is None else float(rel),
        "seconds": time.perf_counter() - t0,
    }
    return q, row


def _capture_inputs(model: Any, block0: Any, segments: np.ndarray, batch_size: int) -> list[tuple[Any, dict]]:
    """[(hidden_states, kwargs)] per batch as block 0 receives them."""
    import torch

    captured: list[tuple[Any, dict]] = []

    def pre_hook(_m: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        kw = dict(kwargs)
        h = args[0] if args else kw.pop("hidden_states")
        captured.append((h.detach(), kw))
        raise _Captured

    handle = block0.register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        with torch.no_grad():
            for i in range(0, len(segments), batch_size):
                with contextlib.suppress(_Captured):
                    model(torch.from_numpy(segments[i:i + batch_size]), use_cache=False)
    finally:
        handle.remove()
    if len(captured) != -(-len(segments) // batch_size):
        raise InputError(f"unsupported architecture {type(model).__name__}: decoder block 0 was not called")
    return captured


class _HessianHooks:
    """Forward hooks collecting each Linear's input Hessian; Linears fed the very same input
    tensor (q/k/v, gate/up) share one Hessian, accumulated once."""

    def __init__(self, linears: Mapping[str, Any]) -> None:
        self.hessians: dict[str, Hessian] = {}
        self.owner: dict[str, str] = {}
        self.seen: list[tuple[Any, str]] = []
        self.handles = [m.register_forward_hook(self._hook(n)) for n, m in linears.items()]

    def _hook(self, name: str) -> Any:
        def hook(_m: Any, args: tuple[Any, ...], _out: Any) -> None:
            x = args[0]
            if name not in self.owner:
                src = next((n for t, n in self.seen if t is x), None)
                self.owner[name] = name if src is None else src
                if src is None:
                    self.hessians[name] = Hessian(int(x.shape[-1]))
            if self.owner[name] == name:
                self.seen.append((x, name))
                self.hessians[name].add_batch(x.detach().float())
        return hook

    def run(self, block: Any, inputs: list[tuple[Any, dict]]) -> list[tuple[Any, dict]]:
        """Run the block over all batches; returns its outputs."""
        import torch

        outs = []
        with torch.no_grad():
            for h, kw in inputs:
                self.seen.clear()
                outs.append((_output(block(h, **kw)).detach(), kw))
        self.seen.clear()
        return outs

    def hessian(self, name: str) -> Hessian:
        if name not in self.owner:
            raise InputError(f"layer {name} was not called by its decoder block (unsupported architecture)")
        return self.hessians[self.owner[name]]

    def remove(self) -> None:
        for hd in self.handles:
            hd.remove()


def _run_block(block: Any, inputs: list[tuple[Any, dict]]) -> list[tuple[Any, dict]]:
    import torch

    with torch.no_grad():
        return [(_output(block(h, **kw)).detach(), kw) for h, kw in inputs]


def _set_weight(lin: Any, W: np.ndarray) -> None:
    import torch

    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(W).to(lin.weight.dtype))


def _finetune(block: Any, index: int, linears: dict[str, Any], layers: dict[str, Any], rows: list[dict[str, Any]],
              originals: dict[str, np.ndarray], collector: _HessianHooks, inputs: list[tuple[Any, dict]],
              outs: list[tuple[Any, dict]], settings: BlockFinetune, bar: Any) -> None:
    """Fine-tune a just-quantized block; updates ``layers`` (fine-tuned weights, proxy losses re-measured)
    and adds ``block_finetune`` to the block's report ``rows``."""
    if bar is not None:
        bar.set_postfix_str(f"fine-tuning block {index}")
    stats = finetune_block(block, linears, layers, inputs, outs, settings, block_index=index).to_dict()
    for row in rows:
        q = layers[row["name"]]
        if stats["kept"]:  # the weight changed: measure its proxy loss again (tr(W H Wᵀ) is unchanged)
            W = originals[row["name"]]
            ref = row["proxy_loss"] / row["relative_proxy_loss"] if row["relative_proxy_loss"] else None
            q.proxy_loss = proxy_loss(W, q.dequantize(), collector.hessian(row["name"]))
            q.relative_proxy_loss = q.proxy_loss / ref if ref else None
        row["block_finetune"] = {**stats, "proxy_loss": q.proxy_loss, "relative_proxy_loss": q.relative_proxy_loss}


def quantize_model(
    model: Any,
    tokenizer_or_segments: Any,
    config: QuantConfig | str | Mapping[str, QuantConfig | str] | None = "v8-k256-256",
    *,
    calib_text: str | None = None,
    n_segments: int = 32,
    seq_len: int = 256,
    seed: int = 0,
    method: str = "vptq",
    bits: int = 2,
    group_size: int = 128,
    sequential: bool = True,
    progress: bool = True,
    resume_dir: str | os.PathLike[str] | None = None,
    batch_size: int = 4,
    finetune: BlockFinetune | None = None,
) -> tuple[dict[str, QuantizedWeight | ScalarQuantized], list[dict[str, Any]]]:
    """Quantize every decoder Linear of a transformers causal LM in place, block by block.

    ``tokenizer_or_segments``: a tokenizer (``n_segments`` seeded windows of ``seq_len`` tokens
    are cut from ``calib_text``, default :func:`vptq.calib.default_text`) or an int array
    ``[n, seq_len]`` of token ids. ``config`` (``method="vptq"``): one QuantConfig, a preset
    name, or a mapping of fnmatch patterns on full Linear names to configs (first match wins;
    unmatched Linears stay full precision). ``method="gptq"|"rtn"`` use ``bits`` and
    ``group_size`` (-1: per row) instead. ``sequential``: block i is calibrated on the outputs
    of the already-quantized blocks (else on full-precision outputs). Each quantized Linear's
    weight is replaced by its dequantized matrix. ``resume_dir``: each finished block is saved
    there and skipped on a rerun with the same model, data and settings.

    ``finetune`` (``method="vptq"`` only, float32 model): right after a block is quantized, its
    codebooks, per-column scale/bias and norm weights are trained to reproduce the full-precision
    block's outputs on the calibration batches (:func:`vptq.models.blockwise.finetune_block`; one
    Adam step per batch of ``batch_size`` segments); the next block is calibrated on the
    fine-tuned block's outputs (``sequential``). The returned weights, the model's Linear weights
    and its norm weights are the fine-tuned values rounded as a float16 checkpoint stores them;
    each QuantizedWeight's proxy loss is re-measured after fine-tuning. Resume files then also
    hold the block's norm weights, and the fingerprint covers the fine-tuning settings.

    Returns ({full name: QuantizedWeight or ScalarQuantized}, per-layer report rows with
    name, shape, method, config, bits_per_weight, proxy_loss, relative_proxy_loss, seconds, block;
    with ``finetune`` also ``block_finetune``: the block's :class:`FinetuneStats` as a dict plus
    the layer's proxy_loss/relative_proxy_loss after fine-tuning). ``proxy_loss`` and ``seconds``
    of a row are those of the quantization itself.
    """
    if method not in METHODS:
        raise InputError(f"method: expected one of {list(METHODS)}, got {method!r}")
    if method == "vptq":
        if config is None:
            raise InputError("config: method 'vptq' needs a QuantConfig, preset name or pattern mapping")
        _check_config(config)
    else:
        if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
            raise InputError(f"bits: expected an int in [1, 8], got {bits!r}")
        if isinstance(group_size, bool) or not isinstance(group_size, int) or (group_size < 1 and group_size != -1):
            raise InputError(f"group_size: expected a positive int or -1, got {group_size!r}")
        config = None
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size: expected a positive int, got {batch_size!r}")
    if finetune is not None:
        if not isinstance(finetune, BlockFinetune):
            raise TypeError(f"finetune: expected None or a vptq.models.blockwise.BlockFinetune, got "
                            f"{type(finetune).__name__}")
        if method != "vptq":
            raise InputError(f"finetune: block-wise fine-tuning needs method 'vptq', got {method!r}")
    import torch

    prefix, blocks = decoder_blocks(model)
    if finetune is not None:
        dtypes = sorted({str(p.dtype) for b in blocks for p in b.parameters() if p.dtype != torch.float32})
        if dtypes:
            raise InputError(f"finetune: block-wise fine-tuning needs a float32 model, got parameters of dtype "
                             f"{dtypes}")
    segments = _segments(tokenizer_or_segments, calib_text, n_segments, seq_len, seed)

    names_per_block: list[dict[str, Any]] = []
    configs: dict[str, QuantConfig | None] = {}
    for i, block in enumerate(blocks):
        lin = _block_linears(block, f"{prefix}.{i}")
        if method == "vptq":
            lin = {n: m for n, m in lin.items() if (configs.setdefault(n, resolve_config(config, n))) is not None}
        names_per_block.append(lin)
    total = sum(len(b) for b in names_per_block)
    if total == 0:
        raise InputError("config: no decoder Linear matches any pattern")
    if method == "vptq":  # fail before any calibration work
        for lin in names_per_block:
            for name, mod in lin.items():
                cfg = configs[name]
                if cfg is not None:
                    try:
                        check_config_fits(cfg, mod.out_features, mod.in_features)
                    except ValueError as e:
                        raise InputError(f"layer {name}: {e}") from e

    rdir = None
    fingerprint = ""
    if resume_dir is not None:
        rdir = Path(resume_dir)
        rdir.mkdir(parents=True, exist_ok=True)
        fingerprint = _fingerprint(model, segments, config, method, bits, group_size, sequential, finetune,
                                   batch_size)

    bar = None
    if progress:
        try:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, desc=f"{method} quantize", unit="layer")
        except ImportError:
            bar = None

    quantized: dict[str, Any] = {}
    report: list[dict[str, Any]] = []
    try:
        inputs = _capture_inputs(model, blocks[0], segments, batch_size)
        last = max(i for i, b in enumerate(names_per_block) if b)  # later blocks need no inputs
        for i, block in enumerate(blocks[:last + 1]):
            linears = names_per_block[i]
            done = rdir / _BLOCK_FILE.format(i) if rdir is not None else None
            norms = {f"{prefix}.{i}.{n}": p for n, p in block_norm_parameters(block).items()}
            if done is not None and done.is_file():
                layers, rows, saved_norms = _load_block(done, fingerprint)
                if set(layers) != set(linears):
                    raise InputError(f"resume file {done} holds layers {sorted(layers)}, expected {sorted(linears)}")
                if finetune is not None and set(saved_norms) != set(norms):
                    raise InputError(f"resume file {done} holds norm weights {sorted(saved_norms)}, expected "
                                     f"{sorted(norms)}")
                fp_out = None if sequential else _run_block(block, inputs)
                for name, q in layers.items():
                    _set_weight(linears[name], q.dequantize())
                with torch.no_grad():
                    for name, a in saved_norms.items():
                        norms[name].copy_(torch.from_numpy(a).to(norms[name].dtype))
                quantized.update(layers)
                report.extend(rows)
                if bar is not None:
                    bar.update(len(layers))
                inputs = _run_block(block, inputs) if sequential else fp_out
                continue

            collector = _HessianHooks(linears)
            try:
                outs = collector.run(block, inputs)
            finally:
                collector.remove()
            block_layers: dict[str, Any] = {}
            block_rows: list[dict[str, Any]] = []
            originals: dict[str, np.ndarray] = {}  # full-precision weights, for the proxy loss after fine-tuning
            for name, lin in linears.items():
                if bar is not None:
                    bar.set_postfix_str(name)
                W = lin.weight.detach().float().numpy()
                q, row = _quantize_linear(name, W, collector.hessian(name), method, configs.get(name), bits,
                                          group_size)
                row["block"] = i
                if finetune is not None:
                    originals[name] = W.copy()  # W may share memory with lin.weight
                _set_weight(lin, q.dequantize())
                block_layers[name] = q
                block_rows.append(row)
                if bar is not None:
                    bar.update(1)
            if finetune is not None and block_layers:
                _finetune(block, i, linears, block_layers, block_rows, originals, collector, inputs, outs, finetune,
                          bar)
            del collector
            if done is not None:
                saved = {n: p.detach().float().numpy() for n, p in norms.items()} if finetune is not None else None
                _save_block(done, fingerprint, block_layers, block_rows, saved)
            quantized.update(block_layers)
            report.extend(block_rows)
            inputs = _run_block(block, inputs) if sequential else outs
    finally:
        if bar is not None:
            bar.close()
    return quantized, report
