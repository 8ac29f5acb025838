"""Evaluation of causal LMs: perplexity with the GPTQ protocol and prefill/decode speed.

Works with any transformers causal LM (fp, our quantized models from :func:`vptq.load_model`,
baselines). torch is imported when a function is called.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..errors import InputError

__all__ = ["DecodeSpeed", "PerplexityResult", "decode_speed", "perplexity", "tokenize"]


@dataclass(frozen=True)
class PerplexityResult:
    """Perplexity over ``windows`` non-overlapping windows of ``seq_len`` tokens."""

    ppl: float  #: exp(nll)
    nll: float  #: mean negative log-likelihood (nats) per predicted token
    tokens: int  #: predicted tokens = windows · (seq_len − 1)
    seconds: float  #: wall time of the forward passes
    tokens_per_second: float  #: tokens fed through the model (windows · seq_len) per second
    windows: int
    seq_len: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DecodeSpeed:
    """Greedy generation speed: one prefill pass over the prompt, then one token per step."""

    prompt_tokens: int
    new_tokens: int  #: tokens generated (the first one comes from the prefill pass)
    prefill_seconds: float
    prefill_tokens_per_second: float
    decode_seconds: float  #: time of the new_tokens − 1 incremental steps
    decode_tokens_per_second: float
    output_ids: list[int]  #: the generated token ids (without the prompt)
    text: str | None  #: decoded generated text (None without a tokenizer)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    if value < minimum:
        raise InputError(f"{name}: expected an int >= {minimum}, got {value}")
    return int(value)


def tokenize(tokenizer: Any, text: str | Sequence[int] | np.ndarray) -> np.ndarray:
    """Token ids int64 [n] of a text (the tokenizer's default special tokens, as GPTQ's eval does)
    or of a given 1-D sequence of ids (then ``tokenizer`` may be None)."""
    if isinstance(text, str):
        if not text.strip():
            raise InputError("text: expected non-empty text, got an empty or blank string")
        if tokenizer is None:
            raise InputError("tokenizer: needed to tokenize a text (or pass token ids instead of text)")
        ids = tokenizer(text)["input_ids"]
    else:
        ids = text
    if hasattr(ids, "detach"):
        ids = ids.detach().cpu().numpy()
    arr = np.asarray(ids)
    if arr.ndim == 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
        raise InputError(f"token ids: expected a 1-D integer sequence, got shape {arr.shape}, dtype {arr.dtype}")
    if arr.size == 0:
        raise InputError("text: expected at least one token, got none")
    return arr.astype(np.int64)


def _logits(out: Any) -> Any:
    return out.logits if hasattr(out, "logits") else out[0] if isinstance(out, tuple) else out


def perplexity(
    model: Any,
    tokenizer: Any,
    text: str | Sequence[int] | np.ndarray,
    seq_len: int = 512,
    max_windows: int | None = None,
    batch_size: int = 1,
) -> PerplexityResult:
    """Perplexity with the GPTQ protocol.

    The whole ``text`` is tokenized once (or ``text`` is already a 1-D sequence of token ids);
    it is cut into ``n // seq_len`` non-overlapping windows (at most ``max_windows``, from the
    start; the tail shorter than a window is dropped); each window is scored independently
    (no context from the previous one), and the result is exp of the mean NLL over every
    predicted token (``seq_len − 1`` per window). The model runs in eval mode under
    ``torch.no_grad()`` (its training flag is restored afterwards); log-softmax in float32.
    """
    import torch

    seq_len = _check_int("seq_len", seq_len, 2)
    batch_size = _check_int("batch_size", batch_size, 1)
    if max_windows is not None:
        max_windows = _check_int("max_windows", max_windows, 1)
    ids = tokenize(tokenizer, text)
    windows = ids.size // seq_len
    if windows == 0:
        raise InputError(f"text has {ids.size} tokens, fewer than seq_len={seq_len}")
    if max_windows is not None:
        windows = min(windows, max_windows)
    data = torch.from_numpy(ids[: windows * seq_len].reshape(windows, seq_len))
    was_training = bool(getattr(model, "training", False))
    if hasattr(model, "eval"):
        model.eval()
    nll_sum = 0.0
    t0 = time.perf_counter()
    try:
        with torch.no_grad():
            for i in range(0, windows, batch_size):
                batch = data[i: i + batch_size]
                logits = _logits(model(batch, use_cache=False))
                logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
                picked = logp.gather(-1, batch[:, 1:, None]).squeeze(-1)
                nll_sum -= float(picked.double().sum())
    finally:
        if was_training and hasattr(model, "train"):
            model.train()
    seconds = time.perf_counter() - t0
    tokens = windows * (seq_len - 1)
    nll = nll_sum / tokens
    return PerplexityResult(
        ppl=math.exp(nll) if nll < 700 else math.inf,
        nll=nll,
        tokens=tokens,
        seconds=seconds,
        tokens_per_second=windows * seq_len / seconds if seconds > 0 else math.inf,
        windows=windows,
        seq_len=seq_len,
    )


class _Stamps:
    """A generate() streamer that records when each chunk of tokens arrives."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def put(self, value: Any) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def decode_speed(
    model: Any,
    tokenizer: Any,
    prompt: str | Sequence[int] | np.ndarray,
    new_tokens: int = 32,
    *,
    warmup: bool = True,
    stop_at_eos: bool = False,
) -> DecodeSpeed:
    """Prefill and greedy-decode speed of ``model.generate`` (KV cache on, exactly ``new_tokens``
    generated, end-of-sequence ignored).

    Timestamps come from a streamer: the prompt is pushed before the prefill pass, then every
    new token as it is produced, so prefill = first new token − prompt and decode = the
    remaining ``new_tokens − 1`` steps. ``prompt`` is a text or a 1-D sequence of token ids.
    ``warmup`` runs one short generate first (allocations, kernel plans). ``stop_at_eos``: stop
    at the end-of-sequence token instead (at most ``new_tokens``; the decode rate is NaN when
    the first token already ends the sequence).
    """
    import torch

    new_tokens = _check_int("new_tokens", new_tokens, 2)
    ids = torch.from_numpy(tokenize(tokenizer, prompt))[None, :]
    pad = getattr(tokenizer, "pad_token_id", None) if tokenizer is not None else None
    if pad is None:
        pad = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(pad, (list, tuple)):
        pad = pad[0] if pad else None
    kw: dict[str, Any] = {"do_sample": False, "use_cache": True, "attention_mask": torch.ones_like(ids)}
    if pad is not None:
        kw["pad_token_id"] = int(pad)
    was_training = bool(getattr(model, "training", False))
    model.eval()
    try:
        with torch.no_grad():
            if warmup:
                model.generate(ids, max_new_tokens=2, min_new_tokens=2, **kw)
            stamps = _Stamps()
            limits = {"max_new_tokens": new_tokens} if stop_at_eos else {
                "max_new_tokens": new_tokens, "min_new_tokens": new_tokens}
            out = model.generate(ids, streamer=stamps, **limits, **kw)
    finally:
        if was_training:
            model.train()
    gen = out[0, ids.shape[1]:].tolist()
    t = stamps.times
    if len(t) < (2 if stop_at_eos else 3):
        raise RuntimeError(f"generate produced {len(gen)} tokens; expected {new_tokens}")
    prefill = t[1] - t[0]
    decode = t[-1] - t[1]
    steps = len(t) - 2
    text = tokenizer.decode(gen) if tokenizer is not None and hasattr(tokenizer, "decode") else None
    return DecodeSpeed(
        prompt_tokens=int(ids.shape[1]),
        new_tokens=len(gen),
        prefill_seconds=prefill,
        prefill_tokens_per_second=ids.shape[1] / prefill if prefill > 0 else math.inf,
        decode_seconds=decode,
        decode_tokens_per_second=steps / decode if decode > 0 else math.inf if steps else math.nan,
        output_ids=gen,
        text=text,
    )


def answer_text(tokenizer: Any, ids: Sequence[int]) -> str:
    """Generated token ids up to the first end-of-sequence token, decoded without special tokens."""
    eos = getattr(tokenizer, "eos_token_id", None)
    ids = list(ids)
    if eos is not None and eos in ids:
        ids = ids[: ids.index(eos)]
    return tokenizer.decode(ids, skip_special_tokens=True).strip()
