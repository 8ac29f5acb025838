"""Checkpoints in the official VPTQ packed format (design note §3), both ways.

A checkpoint directory holds ``config.json`` (the base model's config plus
``quantization_config = {"quant_method": "vptq", "config_for_layers": {...}, ...}``),
``model.safetensors`` (every plain tensor of the model in the model dtype, and for each quantized
Linear ``<name>`` its packed tensors ``<name>.centroids.weight``, ``<name>.indices``, ... and
``<name>.bias``), tokenizer files, ``generation_config.json`` and our ``vptq_report.json``.
Such a directory loads in the official ``vptq`` package and transformers' VPTQ integration, and
theirs load here.

:func:`save_quantized` and :func:`load_quantized_state` need only numpy and ``safetensors``;
:func:`load_model` needs torch and transformers (imported when called).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import struct
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .._arrays import tensor_to_numpy
from ..errors import InputError
from ..quant.quantize import LAYER_CONFIG_KEYS, QuantizedWeight

__all__ = [
    "CheckpointExistsError",
    "load_model",
    "load_quantized_state",
    "save_quantized",
]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
REPORT_FILE = "vptq_report.json"
#: Files copied from ``source_dir`` when present (and not already written by the tokenizer).
AUX_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model", "vocab.json",
    "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json", "generation_config.json",
)
#: Tensor keys one quantized Linear may have in the official format (prefix ``<name>.``).
LAYER_TENSOR_KEYS = (
    "centroids.weight", "res_centroids.weight", "outlier_centroids.weight", "indices", "res_indices",
    "outlier_indices", "perm", "weight_scale", "weight_bias",
)
_SAVE_DTYPES = {"float16": np.float16, "float32": np.float32}
_ST_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
    "I16": np.int16, "I8": np.int8, "U8": np.uint8, "U16": np.uint16, "U32": np.uint32, "U64": np.uint64,
    "BOOL": np.bool_, "BF16": np.uint16,  # BF16 is read as bit patterns and widened to float32
}


class CheckpointExistsError(FileExistsError, InputError):
    """The output directory exists and ``overwrite`` was not given (also a ValueError)."""


# ---------------------------------------------------------------------------------------------- helpers
def _jsonable(x: Any) -> Any:
    """Plain-JSON version of x (numpy scalars/arrays, tuples, Paths; NaN/Inf -> None)."""
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, np.generic):
        return _jsonable(x.item())
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, Path):
        return str(x)
    if x is None or isinstance(x, (bool, int, str)):
        return x
    raise TypeError(f"cannot store a {type(x).__name__} in JSON metadata: {x!r}")


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _write_safetensors(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path), metadata=metadata)


def _leaf(name: str) -> str:
    return name.rsplit(".", 1)[-1]


# ------------------------------------------------------------------------------------------------ save
def _model_parts(model_or_state: Any) -> tuple[dict[str, Any], dict[str, Any], Any]:
    """(config dict, state dict, model or None) of an HF model or a ``(config, state_dict)`` pair."""
    if isinstance(model_or_state, (tuple, list)):
        if len(model_or_state) != 2:
            raise TypeError("model_or_state: expected an HF model or a (config_dict, state_dict) pair, "
                            f"got a sequence of length {len(model_or_state)}")
        cfg, state = model_or_state
        if hasattr(cfg, "to_json_string"):
            cfg = json.loads(cfg.to_json_string(use_diff=False))
        if not isinstance(cfg, Mapping) or not isinstance(state, Mapping):
            raise TypeError("model_or_state: expected (config dict, state dict) mappings, got "
                            f"({type(cfg).__name__}, {type(state).__name__})")
        return dict(cfg), dict(state), None
    if hasattr(model_or_state, "state_dict") and hasattr(model_or_state, "config"):
        model = model_or_state
        cfg = json.loads(model.config.to_json_string(use_diff=False))
        if not cfg.get("architectures"):
            cfg["architectures"] = [type(model).__name__]
        return cfg, _dedupe_tied(model, dict(model.state_dict())), model
    raise TypeError("model_or_state: expected a transformers model (with .config and .state_dict()) or a "
                    f"(config_dict, state_dict) pair, got {type(model_or_state).__name__}")


def _tied_targets(model: Any) -> set[str]:
    """Parameter names transformers re-ties on load (e.g. ``lm_head.weight``)."""
    keys = getattr(model, "all_tied_weights_keys", None)
    if keys is None:
        keys = getattr(model, "_tied_weights_keys", None)
    if not keys:
        return set()
    return {str(k) for k in keys}


def _dedupe_tied(model: Any, state: dict[str, Any]) -> dict[str, Any]:
    """Drop aliases of shared tensors as ``save_pretrained`` does (keep the source, drop the tied target)."""
    tied = _tied_targets(model)
    groups: dict[tuple[int, int, tuple[int, ...]], list[str]] = {}
    for name, t in state.items():
        if hasattr(t, "data_ptr") and hasattr(t, "untyped_storage"):
            key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
            groups.setdefault(key, []).append(name)
    for names in groups.values():
        if len(names) < 2:
            continue
        keep = next((n for n in names if n not in tied), names[0])
        for n in names:
            if n != keep:
                del state[n]
    return state


def _linear_modules(model: Any) -> dict[str, Any]:
    import torch

    return {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


def _build_tensors(
    state: dict[str, Any],
    quantized: Mapping[str, QuantizedWeight],
    model: Any,
    dtype: str,
) -> tuple[dict[str, np.ndarray], dict[str, dict[str, Any]]]:
    """All tensors of the file and the ``config_for_layers`` entries."""
    fdt = _SAVE_DTYPES[dtype]
    linears = _linear_modules(model) if model is not None else None
    layer_configs: dict[str, dict[str, Any]] = {}
    out: dict[str, np.ndarray] = {}
    for name in sorted(quantized):
        qw = quantized[name]
        if not isinstance(qw, QuantizedWeight):
            raise TypeError(f"quantized[{name!r}]: expected a vptq.QuantizedWeight, got {type(qw).__name__}")
        M, N = qw.shape
        if linears is not None:
            if name not in linears:
                raise InputError(f"quantized layer {name!r} is not a torch.nn.Linear of the model")
            lin = linears[name]
            if (lin.out_features, lin.in_features) != (M, N):
                raise InputError(f"quantized layer {name!r}: expected weight shape ({lin.out_features}, "
                                 f"{lin.in_features}) of the model's Linear, got ({M}, {N})")
        w_key = f"{name}.weight"
        if w_key in state:
            shape = tuple(state[w_key].shape)
            if shape != (M, N):
                raise InputError(f"quantized layer {name!r}: expected weight shape {shape} of the state dict, "
                                 f"got ({M}, {N})")
            del state[w_key]
        has_bias = f"{name}.bias" in state
        if has_bias:
            b_shape = tuple(state[f"{name}.bias"].shape)
            if b_shape != (M,):
                raise InputError(f"quantized layer {name!r}: expected bias shape ({M},), got {b_shape}")
        layer_configs[name] = qw.layer_config(bias=has_bias)
        for key, arr in qw.state_dict(dtype=dtype).items():
            out[f"{name}.{key}"] = arr
    for name, t in state.items():
        if name in out:
            raise InputError(f"tensor name {name!r} of the model collides with a quantized layer tensor")
        a = tensor_to_numpy(t, f"tensor {name!r}")
        if a.dtype.kind == "f":
            a = a.astype(fdt, copy=False)
        out[name] = np.ascontiguousarray(a)
    return out, layer_configs


def _layer_report(qw: QuantizedWeight) -> dict[str, Any]:
    return {
        "shape": list(qw.shape),
        "bits_per_weight": qw.bits_per_weight,
        "index_bits_per_weight": qw.index_bits_per_weight,
        "proxy_loss": qw.proxy_loss,
        "relative_proxy_loss": qw.relative_proxy_loss,
        "config": qw.config.to_dict() if qw.config is not None else None,
        "stats": qw.stats,
    }


def save_quantized(
    out_dir: str | os.PathLike[str],
    model_or_state: Any,
    quantized: Mapping[str, QuantizedWeight],
    *,
    dtype: str = "float16",
    tokenizer: Any = None,
    source_dir: str | os.PathLike[str] | None = None,
    extra_metadata: Mapping[str, Any] | None = None,
    extra_files: Mapping[str, str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write an official-format VPTQ checkpoint to ``out_dir`` atomically; returns its path.

    ``model_or_state``: a transformers model, or a ``(config_dict, state_dict)`` pair (numpy arrays
    or torch tensors, e.g. without torch installed). ``quantized`` maps full Linear names
    (``model.layers.0.self_attn.q_proj``) to their :class:`QuantizedWeight`; their ``.weight``
    is replaced by the packed tensors, a ``.bias`` is kept. Every other tensor is stored in
    ``dtype`` ('float16' or 'float32'; integer tensors unchanged); tied aliases (``lm_head`` tied
    to the embeddings) are stored once, as ``save_pretrained`` does. ``tokenizer`` is saved with
    ``save_pretrained``; tokenizer/generation-config files of ``source_dir`` are copied when not
    already written. ``extra_metadata`` (JSON-serialisable) goes into ``vptq_report.json``;
    ``extra_files`` (file name -> UTF-8 text) are written beside it, inside the same atomic write.

    Everything is written to a temporary directory next to ``out_dir``, fsynced and renamed into
    place; an existing ``out_dir`` raises :class:`CheckpointExistsError` unless ``overwrite``
    (then it must be empty or hold a ``config.json``, and is swapped out). Any failure, including
    KeyboardInterrupt, removes the temporary directory: no half-written checkpoint remains.
    """
    from .. import __version__

    if dtype not in _SAVE_DTYPES:
        raise InputError(f"dtype: expected one of {sorted(_SAVE_DTYPES)}, got {dtype!r}")
    if not isinstance(quantized, Mapping):
        raise TypeError(f"quantized: expected a mapping name -> QuantizedWeight, got {type(quantized).__name__}")
    if not quantized:
        raise InputError("quantized: expected at least one quantized layer, got none")
    out = Path(out_dir)
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise CheckpointExistsError(f"output directory {out} already exists (pass overwrite=True to replace it)")
        if not out.is_dir() or out.is_symlink():
            raise InputError(f"output path {out} exists and is not a directory; refusing to replace it")
        if any(out.iterdir()) and not (out / CONFIG_FILE).is_file():
            raise InputError(f"output directory {out} is not empty and holds no {CONFIG_FILE}; "
                             "refusing to replace it")
    files = dict(extra_files or {})
    for fname, text in files.items():
        if not isinstance(fname, str) or not isinstance(text, str):
            raise TypeError("extra_files: expected a mapping file name (str) -> text (str)")
        if Path(fname).name != fname or fname in {"", ".", "..", CONFIG_FILE, WEIGHTS_FILE, REPORT_FILE}:
            raise InputError(f"extra_files: {fname!r} is not a plain file name free to use in a checkpoint")
    src = None
    if source_dir is not None:
        src = Path(source_dir)
        if not src.is_dir():
            raise InputError(f"source_dir: expected a directory, got {src}")

    cfg, state, model = _model_parts(model_or_state)
    tensors, layer_configs = _build_tensors(state, quantized, model, dtype)

    if model is not None:
        # a quantized module cannot stay tied to the embeddings
        tied_quantized = {t for t in _tied_targets(model) if t.endswith(".weight") and t[:-7] in quantized}
        if tied_quantized and cfg.get("tie_word_embeddings"):
            cfg["tie_word_embeddings"] = False
    cfg.pop("_name_or_path", None)  # a local path of the source model, meaningless here
    cfg["torch_dtype"] = dtype
    if "dtype" in cfg:
        cfg["dtype"] = dtype
    qconf: dict[str, Any] = {
        "quant_method": "vptq",
        "config_for_layers": layer_configs,
        "shared_layer_config": {},
    }
    if model is not None:
        # transformers' VPTQ integration replaces every Linear not listed here: name the plain ones
        plain = sorted(n for n in _linear_modules(model) if n not in quantized)
        if plain:
            qconf["modules_to_not_convert"] = plain
    cfg["quantization_config"] = qconf
    cfg = _jsonable(cfg)

    q_params = sum(qw.out_features * qw.in_features for qw in quantized.values())
    q_bits = sum(qw.bits_per_weight * qw.out_features * qw.in_features for qw in quantized.values())
    report: dict[str, Any] = {
        "format": "vptq-packed",
        "vptq_version": __version__,
        "dtype": dtype,
        "quantized_layers": len(quantized),
        "quantized_parameters": q_params,
        "quantized_bits_per_weight": q_bits / q_params,
        "plain_parameters": int(sum(a.size for n, a in tensors.items() if n in state)),
        "layers": {name: _layer_report(quantized[name]) for name in sorted(quantized)},
    }
    if extra_metadata is not None:
        if not isinstance(extra_metadata, Mapping):
            raise TypeError(f"extra_metadata: expected a mapping, got {type(extra_metadata).__name__}")
        report["metadata"] = dict(extra_metadata)
    report = _jsonable(report)

    with atomic_dir(out) as tmp:
        _write_safetensors(tmp / WEIGHTS_FILE, tensors, {"format": "pt"})
        _write_json(tmp / CONFIG_FILE, cfg)
        # safetensors creates its file 0600; give it the umask-derived mode of the other files
        os.chmod(tmp / WEIGHTS_FILE, (tmp / CONFIG_FILE).stat().st_mode & 0o777)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        if model is not None and getattr(model, "generation_config", None) is not None:
            can_generate = getattr(model, "can_generate", None)
            if can_generate is None or can_generate():
                model.generation_config.save_pretrained(str(tmp))
        if src is not None:
            for fname in AUX_FILES:
                if (src / fname).is_file() and not (tmp / fname).exists():
                    shutil.copyfile(src / fname, tmp / fname)
        for fname, text in files.items():
            (tmp / fname).write_text(text, encoding="utf-8")
        report["files"] = [*sorted(p.name for p in tmp.iterdir()), REPORT_FILE]
        _write_json(tmp / REPORT_FILE, report)
    return out


@contextlib.contextmanager
def atomic_dir(out: Path) -> Iterator[Path]:
    """A fresh directory beside ``out`` to fill; when the block ends normally its files are
    fsynced and it replaces ``out`` (see :func:`_swap_into_place`); on any exception it is removed,
    so a failed or interrupted write leaves no partial directory."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        yield tmp
        for p in tmp.rglob("*"):
            if p.is_file():
                _fsync_file(p)
        _fsync_dir(tmp)
        _swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap_into_place(tmp: Path, out: Path) -> None:
    """Rename ``tmp`` to ``out``; an existing ``out`` is moved aside first and deleted afterwards."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        os.rename(out, old)
    try:
        os.rename(tmp, out)
    except BaseException:
        if old is not None:
            os.rename(old, out)
        raise
    _fsync_dir(out.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ load
def _read_header(path: Path) -> dict[str, dict[str, Any]]:
    """Validated safetensors header {name: {dtype, shape, data_offsets}} (no tensor data read)."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise InputError(f"corrupt safetensors file {path}: expected at least 8 bytes, got {len(head)}")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            raise InputError(f"corrupt safetensors file {path}: header length {n} exceeds file size {size}")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"corrupt safetensors file {path}: unreadable header ({e})") from e
    if not isinstance(header, dict):
        raise InputError(f"corrupt safetensors file {path}: header is not a JSON object")
    header.pop("__metadata__", None)
    data_size = size - 8 - n
    for name, info in header.items():
        try:
            dt, shape, (start, end) = info["dtype"], info["shape"], info["data_offsets"]
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(f"corrupt safetensors file {path}: bad entry for tensor {name!r}") from e
        if dt not in _ST_DTYPES:
            raise InputError(f"safetensors file {path}: tensor {name!r} has unsupported dtype {dt}")
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(_ST_DTYPES[dt]).itemsize
        if not 0 <= start <= end <= data_size or end - start != nbytes:
            raise InputError(f"corrupt safetensors file {path}: tensor {name!r} (shape {shape}, {dt}) "
                             f"expected {nbytes} bytes within {data_size}, got offsets [{start}, {end})")
    return header


def _load_safetensors(path: Path) -> dict[str, np.ndarray]:
    """All tensors of one file as numpy arrays (BF16 widened to float32)."""
    from safetensors import safe_open

    header = _read_header(path)
    out: dict[str, np.ndarray] = {}
    bf16 = [n for n, info in header.items() if info["dtype"] == "BF16"]
    try:
        with safe_open(str(path), framework="np") as f:
            for name in header:
                if name not in bf16:
                    out[name] = f.get_tensor(name)
    except Exception as e:  # safetensors raises its own error types
        raise InputError(f"cannot read safetensors file {path}: {e}") from e
    if bf16:
        with path.open("rb") as fh:
            base = 8 + struct.unpack("<Q", fh.read(8))[0]
        mm = np.memmap(path, dtype=np.uint8, mode="r")
        for name in bf16:
            start, end = header[name]["data_offsets"]
            bits = np.frombuffer(mm[base + start: base + end].tobytes(), dtype="<u2")
            out[name] = (bits.astype(np.uint32) << 16).view(np.float32).reshape(header[name]["shape"])
        del mm
    return out


def _load_weights(root: Path) -> dict[str, np.ndarray]:
    single, index = root / WEIGHTS_FILE, root / WEIGHTS_INDEX_FILE
    if single.is_file():
        return _load_safetensors(single)
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise InputError(f"corrupt weight index {index}: {e}") from e
        if not isinstance(weight_map, dict):
            raise InputError(f"corrupt weight index {index}: weight_map is not an object")
        tensors: dict[str, np.ndarray] = {}
        for fname in sorted(set(weight_map.values())):
            shard = root / str(fname)
            if Path(str(fname)).name != str(fname) or not shard.is_file():
                raise InputError(f"weight index {index} names a missing shard {fname!r}")
            tensors.update(_load_safetensors(shard))
        absent = sorted(set(weight_map) - set(tensors))
        if absent:
            raise InputError(f"weight index {index} lists tensors missing from the shards: {absent[:5]}")
        return tensors
    if any(root.glob("*.bin")):
        raise InputError(f"{root} holds only PyTorch .bin weights; only safetensors checkpoints are supported")
    raise InputError(f"{root} has no {WEIGHTS_FILE} (or {WEIGHTS_INDEX_FILE})")


def _normalise_layer_config(name: str, lc: Any) -> dict[str, Any]:
    """The 13 official keys of a layer config; unknown keys (norm_dim, enable_proxy_error, ...) dropped."""
    if not isinstance(lc, Mapping):
        raise InputError(f"layer {name}: expected its config to be an object, got {type(lc).__name__}")
    norm_dim = lc.get("norm_dim", 0)
    if lc.get("enable_norm", False) and norm_dim not in (0, None):
        raise InputError(f"layer {name}: norm_dim={norm_dim} (per-output-row scale) is not supported by the "
                         "packed format; expected 0")
    missing = [k for k in LAYER_CONFIG_KEYS if k not in lc and k not in ("bias", "indices_as_float")]
    if missing:
        raise InputError(f"layer {name}: config is missing keys {missing}")
    return {k: lc[k] for k in LAYER_CONFIG_KEYS if k in lc}


def load_quantized_state(
    path: str | os.PathLike[str],
) -> tuple[dict[str, Any], dict[str, QuantizedWeight], dict[str, np.ndarray]]:
    """Read a VPTQ checkpoint directory -> (config dict, {layer name: QuantizedWeight}, other tensors).

    Layer configs are looked up by full module name in ``config_for_layers``, then by leaf name
    (``q_proj``) in ``shared_layer_config`` (for every ``<name>.indices`` tensor in the file), as
    the official loader does. ``other_tensors`` holds every remaining tensor as numpy (file dtype;
    BF16 widened to float32), including quantized layers' ``<name>.bias``. Any inconsistency
    (missing config.json, not a VPTQ checkpoint, missing/mis-shaped/mis-typed tensors, corrupt
    files) raises ValueError naming the file or layer.
    """
    root = Path(path)
    if not root.is_dir():
        raise InputError(f"not a checkpoint directory: {root}")
    cfg_path = root / CONFIG_FILE
    if not cfg_path.is_file():
        raise InputError(f"{root} is not a model checkpoint: missing {CONFIG_FILE}")
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"cannot parse {cfg_path}: {e}") from e
    if not isinstance(config, dict):
        raise InputError(f"{cfg_path}: expected a JSON object, got {type(config).__name__}")
    qc = config.get("quantization_config")
    if qc is None and isinstance(config.get("text_config"), dict):  # multimodal exports nest it here
        qc = config["text_config"].get("quantization_config")
    if not isinstance(qc, dict) or qc.get("quant_method") != "vptq":
        method = qc.get("quant_method") if isinstance(qc, dict) else None
        raise InputError(f"{root} is not a VPTQ checkpoint: {CONFIG_FILE} has no quantization_config with "
                         f"quant_method 'vptq' (got {method!r})")
    per_layer = qc.get("config_for_layers") or {}
    shared = qc.get("shared_layer_config") or {}
    if not isinstance(per_layer, dict) or not isinstance(shared, dict):
        raise InputError(f"{cfg_path}: config_for_layers and shared_layer_config must be objects")

    tensors = _load_weights(root)
    names = set(per_layer)
    for key in tensors:
        if key.endswith(".indices"):
            prefix = key[: -len(".indices")]
            if prefix not in names and _leaf(prefix) in shared:
                names.add(prefix)
    if not names:
        raise InputError(f"{root}: quantization_config lists no quantized layers")
    layers: dict[str, QuantizedWeight] = {}
    for name in sorted(names):
        lc = _normalise_layer_config(name, per_layer[name] if name in per_layer else shared[_leaf(name)])
        layer_tensors = {k: tensors.pop(f"{name}.{k}") for k in LAYER_TENSOR_KEYS if f"{name}.{k}" in tensors}
        if not layer_tensors:
            raise InputError(f"layer {name}: listed in quantization_config but the checkpoint has no "
                             f"{name}.* tensors")
        if f"{name}.weight" in tensors:
            raise InputError(f"layer {name}: checkpoint has both packed tensors and a dense {name}.weight")
        bias = tensors.get(f"{name}.bias")
        if lc.get("bias") is True and bias is None:
            raise InputError(f"layer {name}: config says bias=true but the checkpoint has no {name}.bias")
        if bias is not None and tuple(bias.shape) != (int(lc["out_features"]),):
            raise InputError(f"layer {name}: expected {name}.bias of shape ({lc['out_features']},), "
                             f"got {tuple(bias.shape)}")
        lc["bias"] = bias is not None
        try:
            layers[name] = QuantizedWeight.from_state_dict(layer_tensors, lc)
        except (ValueError, TypeError) as e:
            raise InputError(f"layer {name}: {e}") from e
    orphans = sorted({k.rsplit(".", 1)[0] for k in tensors if k.endswith((".indices", ".centroids.weight"))})
    if orphans:
        raise InputError(f"{root}: tensors of quantized layers not listed in quantization_config: {orphans[:5]}")
    return config, layers, tensors


def _torch_dtype(dtype: str) -> Any:
    import torch

    allowed = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if dtype not in allowed:
        raise InputError(f"dtype: expected one of {sorted(allowed)}, got {dtype!r}")
    return allowed[dtype]


def _dtype_kwarg() -> str:
    """Name of the dtype argument of ``from_config``: 'dtype' since transformers 4.56, else 'torch_dtype'."""
    import transformers
    from packaging.version import Version

    return "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"


def load_model(path: str | os.PathLike[str], *, dtype: str = "float32") -> tuple[Any, Any]:
    """(model, tokenizer or None) from a VPTQ checkpoint, each quantized Linear running our CPU kernel.

    The transformers model is built from ``config.json`` without its ``quantization_config``
    (so transformers does not look for the CUDA-only official package), plain tensors are loaded
    in ``dtype`` ('float32', 'float16', 'bfloat16'), and every listed Linear is replaced by a
    :class:`vptq.torch.QuantizedLinear`. Works for our checkpoints and official community ones.
    """
    import torch
    import transformers

    from ..runtime.torch import QuantizedLinear

    tdt = _torch_dtype(dtype)
    config, layers, tensors = load_quantized_state(path)
    root = Path(path)
    cfg = {k: v for k, v in config.items() if k != "quantization_config"}
    model_type = cfg.get("model_type")
    if model_type not in transformers.CONFIG_MAPPING:
        raise InputError(f"{root}: unsupported or missing model_type {model_type!r} in {CONFIG_FILE}")
    for key in ("torch_dtype", "dtype"):
        cfg.pop(key, None)
    hf_config = transformers.CONFIG_MAPPING[model_type].from_dict(cfg)
    try:
        model = transformers.AutoModelForCausalLM.from_config(hf_config, **{_dtype_kwarg(): tdt})
    except ValueError as e:
        raise InputError(f"{root}: cannot build a causal LM for model_type {model_type!r}: {e}") from e

    linears = _linear_modules(model)
    for name, qw in layers.items():
        lin = linears.get(name)
        if lin is None:
            raise InputError(f"layer {name}: the {model_type} model has no Linear of that name")
        if (lin.out_features, lin.in_features) != qw.shape:
            raise InputError(f"layer {name}: checkpoint shape {qw.shape} does not match the model's "
                             f"({lin.out_features}, {lin.in_features})")
        if (lin.bias is not None) != (f"{name}.bias" in tensors):
            raise InputError(f"layer {name}: the model's Linear has bias={lin.bias is not None} but the "
                             f"checkpoint {'lacks' if lin.bias is not None else 'has'} {name}.bias")
        bias = tensors.pop(f"{name}.bias", None)
        parent_name, _, leaf = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, leaf, QuantizedLinear(qw, bias=bias))

    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in tensors.items()}
    expected = model.state_dict()
    for k, t in state.items():
        if k in expected and tuple(expected[k].shape) != tuple(t.shape):
            raise InputError(f"tensor {k}: expected shape {tuple(expected[k].shape)}, got {tuple(t.shape)}")
    with torch.no_grad():
        result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise InputError(f"{root}: tensors the model does not have: {sorted(result.unexpected_keys)[:5]}")
    q_buffers = {f"{n}.bias" for n in layers}
    tied = _tied_targets(model) if getattr(hf_config, "tie_word_embeddings", False) else set()
    missing = sorted(set(result.missing_keys) - q_buffers - tied)
    if missing:
        raise InputError(f"{root}: checkpoint lacks tensors {missing[:5]}")
    if tied and hasattr(model, "tie_weights"):
        model.tie_weights()
    if (root / "generation_config.json").is_file():
        model.generation_config = transformers.GenerationConfig.from_pretrained(str(root))
    model.eval()

    tokenizer = None
    if (root / "tokenizer_config.json").is_file() or (root / "tokenizer.json").is_file():
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(root))
    return model, tokenizer
