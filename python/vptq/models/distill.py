"""End-to-end distillation of a VPTQ-quantized causal LM from its full-precision teacher (issue 14).

After quantization every index stays fixed, but the continuous part of each quantized Linear (its
codebooks and per-column scale/bias, see :class:`vptq.runtime.trainable.TrainableQuantizedLinear`)
and the normalisation weights (RMSNorm) can still move. :func:`distill_model` trains them all at
once so that the student's next-token distribution matches the teacher's::

    loss = mean over calibration tokens t of KL(p_teacher(· | x_<=t) ‖ p_student(· | x_<=t))

Embeddings and ``lm_head`` stay frozen unless :class:`Distill` switches them on; plain (not
quantized) Linears and layer biases stay frozen. The run is deterministic: the data order comes
from ``Distill.seed``, there is no dropout (the model runs in eval mode) and no other randomness,
so a rerun with the same settings and thread count gives bit-identical weights.

Teacher distribution, two modes (``Distill.teacher``):

``'on-the-fly'``
    the teacher runs on every micro-batch (no grad) and the KL is exact over the whole vocabulary.
``'topk'``
    the teacher runs once over the calibration segments and keeps, per token, its ``topk`` largest
    log-probabilities with their token ids plus the log of the remaining probability mass (the
    *tail*). The student is then scored on the coarsened distribution {top-k tokens, tail bucket}:
    ``Σ_i p_i (log p_i − log q_i) + p_tail (log p_tail − log q_tail)`` with ``q_tail`` the student's
    exact mass outside the teacher's top-k (a log-sum-exp over the masked logits, no cancellation).
    By the data-processing inequality this is a lower bound of the full KL; it equals the full KL
    when the teacher's and student's tail distributions agree in shape, and exactly when
    ``topk`` is the vocabulary size. The gradient pulls each top-k logit to its teacher probability
    and moves the tail tokens together to match the tail mass. Memory: ``n_segments · seq_len ·
    topk`` × 8 bytes (e.g. 128 · 256 · 64 → 16 MiB).

Memory: the logits are [tokens, vocab]; the decoder runs once per micro-batch, and the lm_head,
log-softmax and KL run over chunks of ``Distill.kl_chunk`` tokens whose gradients are pushed back
into the final hidden state one chunk at a time (then one backward through the decoder), so only
one chunk of logits (a few copies of [kl_chunk, vocab] float32) is alive at any time. This needs
the model's logits to be ``get_output_embeddings()(final hidden state)`` (LLaMA family; checked
on a short probe, InputError otherwise).

The student is given either (a) as :func:`vptq.quantize_model` leaves it (``nn.Linear`` modules
holding the dequantized weights, plus the returned ``quantized`` mapping) or (b) as
:func:`vptq.load_model` returns it (``vptq.runtime.torch.QuantizedLinear`` modules carrying their
``.qweight``). It is returned in the same form, holding the trained values rounded to float16
exactly as :func:`vptq.save_quantized` stores them, so the in-memory model computes what the saved
checkpoint computes (for the tensors distillation trained; untouched tensors are as given).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

try:
    import torch
    from torch import nn
    from torch.nn import functional as F
except ImportError as e:  # pragma: no cover - exercised only without torch
    raise ImportError("vptq.models.distill needs PyTorch: pip install 'vptq[torch]'") from e

from ..errors import InputError
from ..quant.quantize import QuantizedWeight
from ..runtime.trainable import TrainableQuantizedLinear
from .evaluate import PerplexityResult, perplexity

__all__ = ["SCHEDULES", "TEACHER_MODES", "Distill", "DistillReport", "distill_model", "lr_factor"]

SCHEDULES = ("cosine", "constant")
TEACHER_MODES = ("on-the-fly", "topk")


# ------------------------------------------------------------------------------------------ settings
def _int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"Distill.{name}: expected an int, got {type(value).__name__} ({value!r})")
    if value < minimum:
        raise InputError(f"Distill.{name}: expected an int >= {minimum}, got {value}")


def _float(name: str, value: Any, *, positive: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"Distill.{name}: expected a number, got {type(value).__name__} ({value!r})")
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        want = "> 0" if positive else ">= 0"
        raise InputError(f"Distill.{name}: expected a finite number {want}, got {value!r}")


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if not isinstance(value, str):
        raise TypeError(f"Distill.{name}: expected a str, got {type(value).__name__} ({value!r})")
    if value not in allowed:
        raise InputError(f"Distill.{name}: expected one of {list(allowed)}, got {value!r}")


@dataclass(frozen=True)
class Distill:
    """Settings of :func:`distill_model`, validated on construction (TypeError / ValueError naming
    the field).

    One optimizer step (Adam, no weight decay) consumes ``grad_accum`` micro-batches of
    ``batch_size`` calibration segments; segments are drawn epoch by epoch in an order shuffled
    with ``seed``. Learning rates: ``lr`` for the quantized layers' codebooks and scale/bias,
    ``norm_lr`` for the normalisation weights (0 freezes them), ``embed_lr`` for the embeddings /
    lm_head when ``train_embeddings`` / ``train_lm_head`` (a tied embedding/lm_head matrix is one
    tensor: it trains when either is set). Each is multiplied by :func:`lr_factor`: a linear
    warm-up over ``warmup_steps``, then constant or a cosine decay towards 0 at ``steps``.
    ``teacher``: 'on-the-fly' (exact KL) or 'topk' (cached top-``topk`` log-probs + tail bucket,
    see the module doc). ``kl_chunk``: tokens per chunk of the logits/KL computation (bounds the
    memory; the result depends on it only through float rounding).
    """

    steps: int = 250
    lr: float = 1e-4
    norm_lr: float = 1e-4
    embed_lr: float = 1e-5
    batch_size: int = 4
    grad_accum: int = 1
    schedule: str = "cosine"
    warmup_steps: int = 10
    train_embeddings: bool = False
    train_lm_head: bool = False
    teacher: str = "topk"
    topk: int = 64
    kl_chunk: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        _int("steps", self.steps, 0)
        for name in ("lr",):
            _float(name, getattr(self, name), positive=True)
        for name in ("norm_lr", "embed_lr"):
            _float(name, getattr(self, name), positive=False)
        _int("batch_size", self.batch_size, 1)
        _int("grad_accum", self.grad_accum, 1)
        _choice("schedule", self.schedule, SCHEDULES)
        _int("warmup_steps", self.warmup_steps, 0)
        for name in ("train_embeddings", "train_lm_head"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"Distill.{name}: expected a bool, got {getattr(self, name)!r}")
        _choice("teacher", self.teacher, TEACHER_MODES)
        _int("topk", self.topk, 1)
        _int("kl_chunk", self.kl_chunk, 1)
        _int("seed", self.seed, 0)
        if self.seed >= 2**63:
            raise InputError(f"Distill.seed: expected an int in [0, 2**63), got {self.seed}")

    @property
    def segments_per_step(self) -> int:
        """Calibration segments one optimizer step consumes (``batch_size · grad_accum``)."""
        return self.batch_size * self.grad_accum

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Distill:
        """From :meth:`to_dict` output (missing keys take their defaults; unknown keys are an error)."""
        if not isinstance(d, Mapping):
            raise TypeError(f"Distill.from_dict: expected a mapping, got {type(d).__name__}")
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise InputError(f"Distill.from_dict: unknown keys {sorted(unknown)}")
        return cls(**d)

    def replace(self, **changes: Any) -> Distill:
        """A copy with some fields changed (validated)."""
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise TypeError(f"Distill.replace: unknown fields {sorted(unknown)}")
        return Distill(**{**self.to_dict(), **changes})


def lr_factor(settings: Distill, step: int) -> float:
    """Multiplier of the base learning rates at optimizer step ``step`` (0-based).

    Warm-up: ``(step + 1) / (warmup_steps + 1)`` for ``step < warmup_steps`` (linear, reaching 1 at
    the first step after it). Then 1 ('constant'), or ('cosine')
    ``0.5 · (1 + cos(π · (step − warmup_steps) / (steps − warmup_steps)))``: 1 at the end of the
    warm-up, decaying towards 0 (the last step, ``steps − 1``, still has a small positive rate).
    """
    if not isinstance(settings, Distill):
        raise TypeError(f"settings: expected a Distill, got {type(settings).__name__}")
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)):
        raise TypeError(f"step: expected an int, got {type(step).__name__}")
    if step < 0:
        raise InputError(f"step: expected an int >= 0, got {step}")
    w = settings.warmup_steps
    if step < w:
        return (step + 1) / (w + 1)
    if settings.schedule == "constant":
        return 1.0
    span = settings.steps - w
    if span <= 0:
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * min(step - w, span) / span))


# ------------------------------------------------------------------------------------------- report
@dataclass(frozen=True)
class DistillReport:
    """What :func:`distill_model` did. ``quantized`` holds the updated weights (float16-rounded,
    ready for :func:`vptq.save_quantized`); it is left out of :meth:`to_dict`."""

    settings: Distill
    losses: list[float]  #: mean KL (nats per token) of each optimizer step's training tokens
    lrs: list[float]  #: learning-rate factor (:func:`lr_factor`) of each step
    n_segments: int
    seq_len: int
    tokens_per_step: int
    trained: dict[str, int]  #: parameter group -> number of trained scalars
    seconds: float  #: wall time of the whole call (including evaluation)
    train_seconds: float  #: wall time of the optimizer steps
    teacher_seconds: float  #: wall time of the top-k teacher pass ('topk'; 0 for 'on-the-fly')
    peak_rss_mb: float | None  #: the process's peak resident memory so far (None where unknown)
    ppl_teacher: PerplexityResult | None = None
    ppl_before: PerplexityResult | None = None
    ppl_after: PerplexityResult | None = None
    quantized: dict[str, QuantizedWeight] = field(default_factory=dict, repr=False)

    @property
    def gap_reduction(self) -> float | None:
        """``1 − (ppl_after − ppl_teacher) / (ppl_before − ppl_teacher)``: the fraction of the
        perplexity gap to the teacher that distillation closed (None without the three figures)."""
        if self.ppl_teacher is None or self.ppl_before is None or self.ppl_after is None:
            return None
        gap = self.ppl_before.ppl - self.ppl_teacher.ppl
        return None if gap == 0 else 1.0 - (self.ppl_after.ppl - self.ppl_teacher.ppl) / gap

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        for f in fields(self):
            if f.name == "quantized":
                continue
            v = getattr(self, f.name)
            d[f.name] = v.to_dict() if hasattr(v, "to_dict") else v
        d["gap_reduction"] = self.gap_reduction
        return d


# ------------------------------------------------------------------------------------------- helpers
def _inference_class() -> type:
    from ..runtime import torch as vtorch

    return vtorch.QuantizedLinear


def _peak_rss_mb() -> float | None:
    try:
        import resource
        import sys
    except ImportError:  # pragma: no cover - not on Windows
        return None
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 2**20 if sys.platform == "darwin" else r / 1024


def _segments(tokenizer_or_segments: Any, calib_text: str | None, n_segments: int, seq_len: int,
              seed: int) -> np.ndarray:
    if isinstance(tokenizer_or_segments, np.ndarray) or hasattr(tokenizer_or_segments, "detach"):
        seg = tokenizer_or_segments
        seg = seg.detach().cpu().numpy() if hasattr(seg, "detach") else seg
        if seg.ndim != 2 or seg.dtype.kind not in "iu" or seg.shape[0] == 0 or seg.shape[1] < 2:
            raise InputError("segments: expected a 2-D integer array [n, seq_len >= 2], got "
                             f"shape {seg.shape} dtype {seg.dtype}")
        return np.ascontiguousarray(seg, dtype=np.int64)
    from .calib import default_text, token_segments

    _int("n_segments", n_segments, 1)
    _int("seq_len", seq_len, 2)
    text = default_text() if calib_text is None else calib_text
    if not isinstance(text, str) or not text.strip():
        raise InputError("calib_text: expected a non-empty string")
    return token_segments(tokenizer_or_segments, text, int(n_segments), int(seq_len), seed)


def _batches(n: int, batch_size: int, seed: int) -> Iterator[np.ndarray]:
    """Endless micro-batches of segment indices: epoch after epoch, each a fresh seeded permutation."""
    rng = np.random.default_rng(seed)
    pending = np.empty(0, dtype=np.int64)
    while True:
        while pending.size < batch_size:
            pending = np.concatenate([pending, rng.permutation(n)])
        yield pending[:batch_size]
        pending = pending[batch_size:]


def _hidden(model: Any, ids: Any) -> Any:
    out = model.get_decoder()(input_ids=ids, use_cache=False)
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


def _check_split_forward(model: Any, ids: Any, what: str) -> None:
    """InputError unless ``model(ids).logits == lm_head(decoder(ids))`` on a short probe."""
    if not hasattr(model, "get_decoder") or not hasattr(model, "get_output_embeddings"):
        raise InputError(f"{what}: expected a transformers causal LM (get_decoder, get_output_embeddings), "
                         f"got {type(model).__name__}")
    head = model.get_output_embeddings()
    if head is None:
        raise InputError(f"{what}: {type(model).__name__} has no output embeddings (lm_head)")
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        split = head(_hidden(model, ids))
    if full.shape != split.shape or not torch.allclose(full.float(), split.float(), rtol=1e-4, atol=1e-4):
        raise InputError(f"unsupported architecture {type(model).__name__} ({what}): its logits are not "
                         "lm_head(final hidden state), which the chunked KL needs")


def _norm_params(model: Any) -> dict[str, Any]:
    """{name: parameter} of the normalisation layers (modules whose class name contains 'Norm')."""
    out: dict[str, Any] = {}
    for mname, mod in model.named_modules():
        if "Norm" in type(mod).__name__:
            for pname, p in mod.named_parameters(recurse=False):
                out[f"{mname}.{pname}" if mname else pname] = p
    return out


def _round16(t: Any, name: str) -> Any:
    """``t`` rounded to float16 and back (its dtype kept); ValueError on NaN/Inf."""
    r = t.detach().to(torch.float16).to(t.dtype)
    if not bool(torch.isfinite(r).all()):
        raise ValueError(f"{name}: expected finite values after rounding to float16, got NaN/Inf (diverged "
                         "training: lower the learning rate)")
    return r


# ------------------------------------------------------------------------------- trainable layers
def _rebuild(m: TrainableQuantizedLinear) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(Ŵ, Q) of a trainable layer without autograd: the same operations as
    :meth:`TrainableQuantizedLinear.dequantize` (so Ŵ is bit-identical to it), plus Q, the matrix
    before the per-column scale/bias in original column order (None without ``enable_norm``)."""
    L = m.layout
    M, v, G, R = L["M"], L["v"], L["group_num"], L["num_indices"]
    gs, osz = L["group_size"], L["outlier_size"]
    with torch.no_grad():
        def gather(codebook: torch.Tensor, idx: torch.Tensor, k: int) -> torch.Tensor:
            idx = idx.long()
            if G > 1:
                idx = idx + torch.arange(G, dtype=idx.dtype).view(G, 1, 1) * k
            return codebook.reshape(G * k, v).index_select(0, idx.reshape(-1)).view(G, R, gs, v)

        q = gather(m.centroids, m.indices, L["k1"])
        if m.res_centroids is not None:
            q = q + gather(m.res_centroids, m.res_indices, L["k2"])
        q = q.permute(1, 3, 0, 2).reshape(R * v, G * gs)[:M]
        if osz > 0:
            v0, R0 = L["v0"], L["num_outlier_indices"]
            o = m.outlier_centroids.index_select(0, m.outlier_indices.reshape(-1).long()).view(R0, osz, v0)
            q = torch.cat([o.permute(0, 2, 1).reshape(R0 * v0, osz)[:M], q], dim=1)
        if m.perm is not None:
            q = q.index_select(1, torch.argsort(m.perm))
        if m.weight_scale is not None:
            return q * m.weight_scale + m.weight_bias, q
        return q + 0.0, None


def _param_grads(m: TrainableQuantizedLinear, gW: torch.Tensor, q: torch.Tensor | None,
                 needs: tuple[bool, ...]) -> tuple[torch.Tensor | None, ...]:
    """Gradients of (centroids, res_centroids, outlier_centroids, weight_scale, weight_bias) from the
    gradient ``gW`` [M, N] of Ŵ: the transpose of :func:`_rebuild`, with int64 scatter-adds."""
    L = m.layout
    M, v, G, R = L["M"], L["v"], L["group_num"], L["num_indices"]
    gs, osz = L["group_size"], L["outlier_size"]
    g_scale = g_bias = None
    if m.weight_scale is not None:
        g_scale = (gW * q).sum(0) if needs[3] else None
        g_bias = gW.sum(0) if needs[4] else None
        gW = gW * m.weight_scale
    if m.perm is not None:  # W[:, perm[p]] = Q[:, p]  =>  gQ[:, p] = gW[:, perm[p]]
        gW = gW.index_select(1, m.perm)
    g_out = None
    if osz > 0 and needs[2]:
        v0, R0 = L["v0"], L["num_outlier_indices"]
        go = F.pad(gW[:, :osz], (0, 0, 0, R0 * v0 - M)).reshape(R0, v0, osz).permute(0, 2, 1).reshape(-1, v0)
        g_out = torch.zeros_like(m.outlier_centroids).index_add_(0, m.outlier_indices.reshape(-1).long(), go)
    gm = F.pad(gW[:, osz:], (0, 0, 0, R * v - M)).reshape(R, v, G, gs).permute(2, 0, 3, 1).reshape(-1, v)

    def scatter(codebook: torch.Tensor, idx: torch.Tensor, k: int) -> torch.Tensor:
        idx = idx.long()
        if G > 1:
            idx = idx + torch.arange(G, dtype=idx.dtype).view(G, 1, 1) * k
        return gm.new_zeros(G * k, v).index_add_(0, idx.reshape(-1), gm).view_as(codebook)

    g_c1 = scatter(m.centroids, m.indices, L["k1"]) if needs[0] else None
    g_c2 = scatter(m.res_centroids, m.res_indices, L["k2"]) if m.res_centroids is not None and needs[1] else None
    return g_c1, g_c2, g_out, g_scale, g_bias


class _VQLinearFn(torch.autograd.Function):
    """``x @ Ŵᵀ + bias`` whose backward rebuilds Ŵ instead of keeping it (and its intermediates)
    alive between forward and backward: only ``x`` is saved. Same values as
    :meth:`TrainableQuantizedLinear.forward`; the codebook gradients are scatter-adds with int64
    indices (PyTorch's CPU ``index_add_`` is several times slower with the module's int32 ones)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, m: TrainableQuantizedLinear, *params: Any) -> torch.Tensor:
        with torch.no_grad():
            W = TrainableQuantizedLinear.dequantize(m)
            y = F.linear(x, W, m.bias)
        ctx.save_for_backward(x)
        ctx.module = m
        return y

    @staticmethod
    def backward(ctx: Any, gy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (x,) = ctx.saved_tensors
        m: TrainableQuantizedLinear = ctx.module
        W, q = _rebuild(m)
        gy2 = gy.reshape(-1, m.out_features)
        gx = (gy2 @ W).view(x.shape) if ctx.needs_input_grad[0] else None
        needs = tuple(ctx.needs_input_grad[2:])
        grads = _param_grads(m, gy2.t() @ x.reshape(-1, m.in_features), q, needs) if any(needs) else (None,) * 5
        return (gx, None, *grads)


class _DistillLinear(TrainableQuantizedLinear):
    """A :class:`TrainableQuantizedLinear` whose training forward runs :class:`_VQLinearFn`
    (same outputs, less memory and time); without autograd it is the parent's forward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        params = (self.centroids, self.res_centroids, self.outlier_centroids, self.weight_scale, self.weight_bias)
        if not (torch.is_grad_enabled() and isinstance(x, torch.Tensor) and x.is_floating_point()
                and x.dim() > 0 and x.shape[-1] == self.in_features
                and (x.requires_grad or any(p is not None and p.requires_grad for p in params))):
            return super().forward(x)
        dtype = self.centroids.dtype
        y = _VQLinearFn.apply(x.to(dtype), self, *params)
        return y if y.dtype == x.dtype else y.to(x.dtype)


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, leaf, module)


class _Swap:
    """The student's quantized layers swapped for trainable ones, and how to put them back."""

    def __init__(self, student: nn.Module, quantized: Mapping[str, QuantizedWeight] | None) -> None:
        qcls = _inference_class()
        modules = dict(student.named_modules())
        if any(isinstance(m, TrainableQuantizedLinear) for m in modules.values()):
            raise InputError("student: already holds TrainableQuantizedLinear modules; give it with its "
                             "inference (vptq.load_model) or nn.Linear (vptq.quantize_model) modules")
        if quantized is None:
            todo = {n: m.qweight for n, m in modules.items() if isinstance(m, qcls)}
            if not todo:
                raise InputError("student: has no vptq.runtime.torch.QuantizedLinear module; a model from "
                                 "vptq.quantize_model needs quantized= (the mapping it returned)")
            lacking = [n for n, q in todo.items() if not isinstance(q, QuantizedWeight)]
            if lacking:
                raise InputError(f"student: QuantizedLinear modules {lacking[:5]} do not keep the QuantizedWeight "
                                 "they were built from; pass quantized=vptq.load_quantized_state(path)[1]")
        else:
            if not isinstance(quantized, Mapping):
                raise TypeError(f"quantized: expected a mapping name -> QuantizedWeight, got "
                                f"{type(quantized).__name__}")
            if not quantized:
                raise InputError("quantized: expected at least one layer, got none")
            todo = dict(quantized)
        new: dict[str, TrainableQuantizedLinear] = {}
        dense: set[str] = set()
        for name, qw in todo.items():  # build everything first so a failure leaves the student unchanged
            if not isinstance(qw, QuantizedWeight):
                raise TypeError(f"quantized[{name!r}]: expected a vptq.QuantizedWeight (VPTQ layers only), "
                                f"got {type(qw).__name__}")
            m = modules.get(name)
            if isinstance(m, qcls):
                new[name] = _DistillLinear.from_quantized_linear(m, qw, verify=True)
            elif isinstance(m, nn.Linear):
                shape = (int(m.out_features), int(m.in_features))
                if qw.shape != shape:
                    raise InputError(f"quantized[{name!r}]: expected shape {shape} (out, in) of the Linear, "
                                     f"got {qw.shape}")
                w = m.weight.detach().cpu().numpy()
                if not np.array_equal(w.view(np.uint32), qw.dequantize().view(np.uint32)):
                    raise InputError(f"quantized[{name!r}] does not dequantize to the Linear's weight: it belongs "
                                     "to another layer or model, or the weight changed since quantization")
                new[name] = _DistillLinear(qw, None if m.bias is None else m.bias.detach())
                dense.add(name)
            else:
                found = "no module" if m is None else f"a {type(m).__name__}"
                raise InputError(f"quantized[{name!r}]: expected a torch.nn.Linear or a "
                                 f"vptq.runtime.torch.QuantizedLinear of the student at that name, found {found}")
        self.originals = {n: modules[n] for n in new}
        self.dense = dense
        self.trainable = new
        self.source = {n: todo[n] for n in dense}
        for name, t in new.items():
            _set_module(student, name, t)
        # the dense matrices are idle while their layers train (424 MB for SmolLM2-135M): release
        # them; they were checked to be the weights' dequantize(), so they can be rebuilt exactly
        for name in dense:
            w = self.originals[name].weight
            w.data = w.data.new_empty(0)

    def restore_originals(self, student: nn.Module) -> None:
        """Undo the swap: the student's own modules, the dense ones with their original matrices."""
        for name, m in self.originals.items():
            if name in self.dense and m.weight.numel() == 0:
                m.weight.data = torch.from_numpy(self.source[name].dequantize()).to(m.weight.dtype)
            _set_module(student, name, m)

    def finish(self, student: nn.Module) -> dict[str, QuantizedWeight]:
        """Put the student's modules back holding the trained values (float16-rounded); returns the
        weights. Everything is computed (and checked) before the student is touched."""
        qcls = _inference_class()
        weights = {n: m.to_quantized_weight("float16") for n, m in self.trainable.items()}
        new: dict[str, Any] = {}
        for name, qw in weights.items():
            old = self.originals[name]
            if name in self.dense:
                new[name] = torch.from_numpy(qw.dequantize()).to(old.weight.dtype)
            else:
                b = self.trainable[name].bias
                q = qcls(qw, bias=None if b is None else b.detach().cpu().to(torch.float32).numpy())
                q.train(old.training)
                new[name] = q
        for name, m in new.items():
            if name in self.dense:
                lin = self.originals[name]
                lin.weight.data = m
                _set_module(student, name, lin)
            else:
                _set_module(student, name, m)
        return weights


# -------------------------------------------------------------------------------------------- losses
def _kl_full(s_logits: Any, t_logits: Any) -> Any:
    """Σ_tokens KL(softmax(t) ‖ softmax(s)) over the whole vocabulary."""
    s_logp = torch.log_softmax(s_logits.float(), dim=-1)
    t_logp = torch.log_softmax(t_logits.float(), dim=-1)
    return F.kl_div(s_logp, t_logp, reduction="sum", log_target=True)


def _kl_topk(s_logits: Any, t_logp: Any, t_idx: Any, t_tail: Any) -> Any:
    """Σ_tokens KL over {teacher's top-k tokens, tail bucket} (module doc); ``t_tail`` None when the
    top-k is the whole vocabulary."""
    s = s_logits.float()
    lse = torch.logsumexp(s, dim=-1)
    s_sel = s.gather(-1, t_idx) - lse[:, None]
    p = t_logp.exp()
    kl = (p * (t_logp - s_sel)).sum()
    if t_tail is not None:
        s_tail = torch.logsumexp(s.scatter(-1, t_idx, float("-inf")), dim=-1) - lse
        kl = kl + (t_tail.exp() * (t_tail - s_tail)).sum()
    return kl


class _TopkCache:
    """Teacher top-k log-probs [n, T, k] (float32), ids (int32) and tail log-mass [n, T] (or None)."""

    def __init__(self, teacher: Any, segments: np.ndarray, k: int, vocab: int, batch_size: int, chunk: int,
                 bar: Any) -> None:
        n, T = segments.shape
        self.full = k >= vocab
        self.logp = torch.empty((n, T, k), dtype=torch.float32)
        self.idx = torch.empty((n, T, k), dtype=torch.int32)
        self.tail = None if self.full else torch.empty((n, T), dtype=torch.float32)
        head = teacher.get_output_embeddings()
        with torch.no_grad():
            for i in range(0, n, batch_size):
                ids = torch.from_numpy(segments[i:i + batch_size])
                h = _hidden(teacher, ids)
                b = h.shape[0]
                hf = h.reshape(b * T, -1)
                lp_out, idx_out = self.logp[i:i + b].view(b * T, k), self.idx[i:i + b].view(b * T, k)
                tail_out = None if self.tail is None else self.tail[i:i + b].view(b * T)
                for c in range(0, b * T, chunk):
                    logp = torch.log_softmax(head(hf[c:c + chunk]).float(), dim=-1)
                    if self.full:  # the whole vocabulary, in token order
                        top, idx = logp, torch.arange(vocab).expand_as(logp)
                    else:
                        top, idx = logp.topk(k, dim=-1)
                    lp_out[c:c + chunk] = top
                    idx_out[c:c + chunk] = idx
                    if tail_out is not None:
                        tail_out[c:c + chunk] = torch.logsumexp(logp.scatter(-1, idx, float("-inf")), dim=-1)
                if bar is not None:
                    bar.update(b)

    def get(self, rows: np.ndarray) -> tuple[Any, Any, Any]:
        r = torch.from_numpy(rows)
        k = self.logp.shape[-1]
        lp = self.logp.index_select(0, r).reshape(-1, k)
        idx = self.idx.index_select(0, r).reshape(-1, k).long()
        tail = None if self.tail is None else self.tail.index_select(0, r).reshape(-1)
        return lp, idx, tail


# ---------------------------------------------------------------------------------------------- main
def _progress(progress: bool, total: int, desc: str, unit: str) -> Any:
    if not progress:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency of the hf extra
        return None
    return tqdm(total=total, desc=desc, unit=unit)


def distill_model(
    student: Any,
    teacher: Any,
    tokenizer_or_segments: Any,
    settings: Distill | None = None,
    *,
    quantized: Mapping[str, QuantizedWeight] | None = None,
    calib_text: str | None = None,
    n_segments: int = 128,
    seq_len: int = 256,
    eval_ids: Any = None,
    eval_seq_len: int = 512,
    eval_windows: int | None = 16,
    eval_teacher: bool = True,
    progress: bool = True,
) -> DistillReport:
    """Distil ``teacher`` (the full-precision model) into the quantized ``student`` in place.

    ``student``: (a) a model as :func:`vptq.quantize_model` leaves it, with the mapping it
    returned as ``quantized`` (its Linear weights must equal the weights' dequantized matrices), or
    (b) a model from :func:`vptq.load_model` (``quantized`` None: every
    ``vptq.runtime.torch.QuantizedLinear`` is trained, from its ``.qweight``; or a mapping from
    :func:`vptq.load_quantized_state` naming the layers to train). Its floating parameters must be
    float32. ``teacher``: same vocabulary; any float dtype; never modified.
    ``tokenizer_or_segments``: a tokenizer (``n_segments`` seeded windows of ``seq_len`` tokens are
    cut from ``calib_text``, default :func:`vptq.models.calib.default_text`, with seed
    ``settings.seed``) or an int array [n, seq_len] of token ids. ``settings``: :class:`Distill`
    (defaults when None).

    Trains what the module doc lists for ``settings.steps`` optimizer steps, then puts the student
    back in the form it was given, holding the trained values rounded to float16 (quantized layers:
    ``to_quantized_weight(round_to='float16')``; (a) gets ``Linear.weight`` = the new dequantized
    matrices, (b) new inference modules; trained norms/embeddings rounded in place). On any
    failure, including KeyboardInterrupt, the student is left exactly as it was given.

    ``eval_ids`` (1-D token ids of held-out text): perplexity (:func:`vptq.perplexity`, windows of
    ``eval_seq_len``, at most ``eval_windows``) of the student before and after, and of the teacher
    when ``eval_teacher``. ``progress``: tqdm bars with the loss and ETA.

    Returns a :class:`DistillReport` whose ``quantized`` maps each trained layer to its new
    :class:`vptq.QuantizedWeight` (for a (b) student trained on a subset, merge in the other
    layers before saving).
    """
    t_start = time.perf_counter()
    if settings is None:
        settings = Distill()
    if not isinstance(settings, Distill):
        raise TypeError(f"settings: expected a vptq.models.distill.Distill, got {type(settings).__name__}")
    for what, m in (("student", student), ("teacher", teacher)):
        if not isinstance(m, torch.nn.Module):
            raise TypeError(f"{what}: expected a torch.nn.Module (transformers causal LM), got {type(m).__name__}")
    if student is teacher:
        raise InputError("teacher: expected a separate full-precision model, got the student itself")
    for name, p in student.named_parameters():
        if p.is_floating_point() and p.dtype != torch.float32:
            raise InputError(f"student: expected float32 parameters, got {name} in {p.dtype} (load it with "
                             "dtype='float32')")
    segments = _segments(tokenizer_or_segments, calib_text, n_segments, seq_len, settings.seed)
    n, T = segments.shape
    vocab_s = student.get_output_embeddings().weight.shape[0] if hasattr(student, "get_output_embeddings") \
        and student.get_output_embeddings() is not None else None
    vocab_t = teacher.get_output_embeddings().weight.shape[0] if hasattr(teacher, "get_output_embeddings") \
        and teacher.get_output_embeddings() is not None else None
    if vocab_s is None or vocab_t is None:
        raise InputError("student and teacher: expected transformers causal LMs with output embeddings (lm_head)")
    if vocab_s != vocab_t:
        raise InputError(f"teacher: vocabulary of {vocab_t} tokens, the student has {vocab_s}")
    vocab = int(vocab_s)
    if int(segments.min()) < 0 or int(segments.max()) >= vocab:
        raise InputError(f"segments: token ids must lie in [0, {vocab}), got [{segments.min()}, {segments.max()}]")
    if settings.teacher == "topk" and settings.topk > vocab:
        raise InputError(f"Distill.topk: expected at most the vocabulary size {vocab}, got {settings.topk}")

    student_training, teacher_training = student.training, teacher.training
    probe = torch.from_numpy(segments[:1, : min(T, 8)])
    student.eval()
    teacher.eval()
    try:
        _check_split_forward(teacher, probe, "teacher")
        _check_split_forward(student, probe, "student")

        def evaluate(model: Any) -> PerplexityResult | None:
            if eval_ids is None:
                return None
            return perplexity(model, None, eval_ids, seq_len=eval_seq_len, max_windows=eval_windows)

        ppl_teacher = evaluate(teacher) if eval_teacher else None
        ppl_before = evaluate(student)
        weights, losses, lrs, trained, train_s, teacher_s = _train(student, teacher, segments, settings, quantized,
                                                                  vocab, progress)
        ppl_after = evaluate(student)
    finally:
        student.train(student_training)
        teacher.train(teacher_training)
    return DistillReport(
        settings=settings, losses=losses, lrs=lrs, n_segments=n, seq_len=T,
        tokens_per_step=settings.segments_per_step * T, trained=trained,
        seconds=time.perf_counter() - t_start, train_seconds=train_s, teacher_seconds=teacher_s,
        peak_rss_mb=_peak_rss_mb(), ppl_teacher=ppl_teacher, ppl_before=ppl_before, ppl_after=ppl_after,
        quantized=weights,
    )


def _train(
    student: Any, teacher: Any, segments: np.ndarray, settings: Distill,
    quantized: Mapping[str, QuantizedWeight] | None, vocab: int, progress: bool,
) -> tuple[dict[str, QuantizedWeight], list[float], list[float], dict[str, int], float, float]:
    n, T = segments.shape
    teacher_s = 0.0
    cache = None
    if settings.teacher == "topk":
        t0 = time.perf_counter()
        bar = _progress(progress, n, "distill: teacher top-k", "segment")
        try:
            cache = _TopkCache(teacher, segments, settings.topk, vocab, settings.batch_size, settings.kl_chunk, bar)
        finally:
            if bar is not None:
                bar.close()
        teacher_s = time.perf_counter() - t0

    flags = {p: p.requires_grad for p in student.parameters()}
    swap = _Swap(student, quantized)
    # from here on a failure must leave the student as it was given
    saved: dict[str, Any] = {}
    try:
        for p in student.parameters():
            p.requires_grad_(False)
        groups: dict[str, list[Any]] = {"quantized": [], "norms": [], "embeddings": []}
        for m in swap.trainable.values():
            groups["quantized"].extend(m.parameters())
        if settings.norm_lr > 0:
            groups["norms"].extend(_norm_params(student).values())
        if settings.train_embeddings or settings.train_lm_head:
            emb = [student.get_input_embeddings()] if settings.train_embeddings else []
            emb += [student.get_output_embeddings()] if settings.train_lm_head else []
            for mod in emb:
                p = mod.weight
                if all(p is not q for q in groups["embeddings"]):
                    groups["embeddings"].append(p)
        if settings.embed_lr == 0:
            groups["embeddings"] = []
        base_lr = {"quantized": settings.lr, "norms": settings.norm_lr, "embeddings": settings.embed_lr}
        pnames = {id(p): n for n, p in student.named_parameters()}
        for g in ("norms", "embeddings"):
            for p in groups[g]:
                saved[pnames[id(p)]] = (p, p.detach().clone())
        param_groups = []
        for g, ps in groups.items():
            for p in ps:
                p.requires_grad_(True)
            if ps:
                param_groups.append({"params": ps, "lr": base_lr[g], "name": g})
        trained = {g: int(sum(p.numel() for p in ps)) for g, ps in groups.items()}
        opt = torch.optim.Adam(param_groups, lr=settings.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)

        head = student.get_output_embeddings()
        t_head = teacher.get_output_embeddings()
        batches = _batches(n, settings.batch_size, settings.seed)
        tokens = settings.segments_per_step * T
        chunk = settings.kl_chunk
        losses: list[float] = []
        lrs: list[float] = []
        bar = _progress(progress, settings.steps, f"distill ({settings.teacher})", "step")
        t0 = time.perf_counter()
        try:
            for step in range(settings.steps):
                f = lr_factor(settings, step)
                for group in opt.param_groups:
                    group["lr"] = base_lr[group["name"]] * f
                opt.zero_grad(set_to_none=True)
                step_loss = 0.0
                for _ in range(settings.grad_accum):
                    rows = next(batches)
                    ids = torch.from_numpy(segments[rows])
                    h = _hidden(student, ids)
                    hd = h.detach().reshape(-1, h.shape[-1]).requires_grad_(True)
                    if cache is None:
                        with torch.no_grad():
                            th = _hidden(teacher, ids).reshape(-1, h.shape[-1])
                    else:
                        t_lp, t_idx, t_tail = cache.get(rows)
                    for c in range(0, hd.shape[0], chunk):
                        s_logits = head(hd[c:c + chunk])
                        if cache is None:
                            with torch.no_grad():
                                t_logits = t_head(th[c:c + chunk])
                            kl = _kl_full(s_logits, t_logits)
                        else:
                            kl = _kl_topk(s_logits, t_lp[c:c + chunk], t_idx[c:c + chunk],
                                          None if t_tail is None else t_tail[c:c + chunk])
                        loss = kl / tokens
                        loss.backward()
                        step_loss += float(loss.detach())
                        del s_logits, kl, loss
                    h.backward(hd.grad.view_as(h))
                    del h, hd
                if not math.isfinite(step_loss):
                    raise FloatingPointError(f"distillation diverged at step {step} (loss {step_loss}); "
                                             "lower the learning rates")
                opt.step()
                losses.append(step_loss)
                lrs.append(f)
                if bar is not None:
                    bar.set_postfix(loss=f"{step_loss:.4f}", lr=f"{settings.lr * f:.2e}", refresh=False)
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
        train_s = time.perf_counter() - t0
        opt.zero_grad(set_to_none=True)
        del opt
        # round what was trained to float16 (check everything first, then write)
        rounded = {name: (p, _round16(p, name)) for name, (p, _) in saved.items()}
        weights = swap.finish(student)
    except BaseException:
        swap.restore_originals(student)
        with torch.no_grad():
            for p, old in saved.values():
                p.copy_(old)
        raise
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)
    with torch.no_grad():
        for p, r in rounded.values():
            p.copy_(r)
    return weights, losses, lrs, trained, train_s, teacher_s
