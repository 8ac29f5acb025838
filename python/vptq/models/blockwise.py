"""Block-wise fine-tuning of a freshly quantized decoder block (VPTQ paper, App. B, "layer-wise").

Right after the Linears of a decoder block are quantized, the block's continuous quantized
parameters (main, residual and outlier codebooks, per-input-column scale and bias) and its
normalisation weights (RMSNorm) are trained with Adam to bring the quantized block's outputs
back towards the full-precision block's outputs on the calibration batches. Indices and the
act-order permutation stay fixed, so the file format and the bits per weight do not change.

:func:`finetune_block` works on one block and the batches the quantization pipeline already
holds (memory stays bounded by one block's activations); :func:`vptq.quantize_model` calls it
for each block when given ``finetune=BlockFinetune(...)``. The loss is the mean squared error
normalised by the targets' mean square (a relative error; 0 = exact, 1 = as bad as outputting 0).

Results are exactly what a checkpoint stores: after training, codebooks, scale/bias and norm
weights are rounded to float16 (the checkpoint's storage dtype), and the fine-tuned values are
kept only if the block's loss with those rounded values is below the loss before fine-tuning.

This module needs PyTorch (imported when :func:`finetune_block` is called).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, ClassVar

import numpy as np

from ..errors import InputError
from ..quant.quantize import QuantizedWeight

__all__ = ["BlockFinetune", "FinetuneStats", "block_norm_parameters", "finetune_block"]

SCHEDULES = ("constant", "cosine")


def _field_int(name: str, value: Any, lo: int, hi: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"BlockFinetune.{name}: expected an int, got {type(value).__name__} ({value!r})")
    if value < lo or (hi is not None and value >= hi):
        bound = f">= {lo}" if hi is None else f"in [{lo}, {hi})"
        raise InputError(f"BlockFinetune.{name}: expected an int {bound}, got {value}")


def _field_lr(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"BlockFinetune.{name}: expected a number, got {type(value).__name__} ({value!r})")
    if not (math.isfinite(value) and 0 <= value <= 1):
        raise InputError(f"BlockFinetune.{name}: expected a learning rate in [0, 1], got {value!r}")


@dataclass(frozen=True)
class BlockFinetune:
    """Settings of the block-wise fine-tuning, validated on construction (TypeError for a wrong
    type, ValueError for a wrong value, both naming the field).

    One Adam step processes one calibration batch as the pipeline holds it (``batch_size``
    segments of :func:`vptq.quantize_model`); batches are visited in a seeded random order,
    epoch after epoch. Learning rates are absolute Adam step sizes: codebooks live in the
    normalised space of each input column (values in about [0, 1]), scale/bias and norm weights
    in weight units.
    """

    #: Adam steps per block (0: only round the norm weights and measure the loss).
    steps: int = 64
    #: learning rate of the codebooks (main, residual, outlier).
    lr: float = 1e-3
    #: learning rate of the per-input-column ``weight_scale``/``weight_bias``.
    scale_lr: float = 1e-4
    #: learning rate of the block's normalisation weights.
    norm_lr: float = 1e-3
    #: train ``weight_scale``/``weight_bias`` (else only codebooks and norms).
    train_scale: bool = True
    #: train the block's normalisation weights (RMSNorm/LayerNorm).
    train_norms: bool = True
    #: learning-rate schedule over the steps: 'cosine' (decay to 0) or 'constant'.
    schedule: str = "cosine"
    #: calibration batches held out of training (the last ones); they decide "never worse" and,
    #: with ``eval_every``, which step's values to keep. 0: decide on all batches.
    val_batches: int = 0
    #: measure the evaluation loss every this many steps and keep the best values (0: only at the end).
    eval_every: int = 0
    #: seed of the batch order (combined with the block index).
    seed: int = 0

    SCHEDULES: ClassVar[tuple[str, ...]] = SCHEDULES

    def __post_init__(self) -> None:
        _field_int("steps", self.steps, 0)
        _field_int("val_batches", self.val_batches, 0)
        _field_int("eval_every", self.eval_every, 0)
        _field_int("seed", self.seed, 0, 2**63)
        for name in ("lr", "scale_lr", "norm_lr"):
            _field_lr(name, getattr(self, name))
        for name in ("train_scale", "train_norms"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"BlockFinetune.{name}: expected a bool, got {getattr(self, name)!r}")
        if not isinstance(self.schedule, str):
            raise TypeError(f"BlockFinetune.schedule: expected a str, got {type(self.schedule).__name__}")
        if self.schedule not in SCHEDULES:
            raise InputError(f"BlockFinetune.schedule: expected one of {list(SCHEDULES)}, got {self.schedule!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (every field)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BlockFinetune:
        """Inverse of :meth:`to_dict`; missing keys take their defaults, unknown keys raise ValueError."""
        if not isinstance(d, Mapping):
            raise TypeError(f"BlockFinetune.from_dict: expected a mapping, got {type(d).__name__}")
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise InputError(f"BlockFinetune.from_dict: unknown keys {sorted(unknown)}")
        return cls(**d)

    def replace(self, **changes: Any) -> BlockFinetune:
        """A copy with some fields changed (validated)."""
        return replace(self, **changes)


@dataclass(frozen=True)
class FinetuneStats:
    """What :func:`finetune_block` did to one block. Losses are relative MSEs (squared error
    summed over the evaluation batches / the targets' summed squares)."""

    loss_before: float  #: the quantized block before fine-tuning
    loss_finetuned: float  #: the fine-tuned block, values rounded as stored (inf if they overflowed)
    loss_after: float  #: the block as left: loss_finetuned if kept, else loss_before
    kept: bool  #: the fine-tuned values were kept (loss_finetuned < loss_before)
    steps: int  #: Adam steps taken
    best_step: int  #: step whose values were kept (= steps without eval_every; 0 if not kept)
    seconds: float  #: wall time, evaluations included
    train_batches: int
    eval_batches: int  #: batches the losses are measured on (held-out ones if val_batches > 0)
    parameters: int  #: trained scalars

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------------------------ helpers
def block_norm_parameters(block: Any) -> dict[str, Any]:
    """{name inside the block: parameter} of the block's normalisation layers: the parameters held
    directly by modules whose class name contains 'Norm' (LlamaRMSNorm, LayerNorm, ...)."""
    return {f"{mname}.{pname}" if mname else pname: p
            for mname, m in block.named_modules() if "norm" in type(m).__name__.lower()
            for pname, p in m.named_parameters(recurse=False)}


def _output(out: Any) -> Any:
    return out[0] if isinstance(out, tuple) else out


def _target(t: Any) -> Any:
    return t[0] if isinstance(t, tuple) else t


def _lr_factor(schedule: str, step: int, steps: int) -> float:
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * step / steps))
    return 1.0


def _sq_error(block: Any, batches: Sequence[tuple[Any, dict]], targets: Sequence[Any], idx: Sequence[int]) -> float:
    """Summed squared error (float64) of the block's outputs over the batches ``idx``."""
    import torch

    total = 0.0
    with torch.no_grad():
        for j in idx:
            h, kw = batches[j]
            d = _output(block(h, **kw)).double() - _target(targets[j]).double()
            total += float((d * d).sum())
    return total


# --------------------------------------------------------------------------------------------- main
def finetune_block(
    block: Any,
    linears: Mapping[str, Any],
    quantized: MutableMapping[str, Any],
    inputs: Sequence[tuple[Any, dict]],
    targets: Sequence[Any],
    settings: BlockFinetune,
    *,
    block_index: int = 0,
) -> FinetuneStats:
    """Fine-tune one quantized decoder block in place; returns what was done.

    ``linears`` maps names to the block's ``torch.nn.Linear`` modules whose weights were replaced
    by the dequantized ``quantized[name]`` (a :class:`vptq.QuantizedWeight`; other entries, e.g.
    scalar baselines, stay untouched). ``inputs`` are the block's calibration batches
    ``[(hidden_states, kwargs)]`` as :func:`vptq.quantize_model` captures them, ``targets`` the
    full-precision block's outputs on them (tensors, or ``(tensor, kwargs)`` pairs).

    During training each such Linear is swapped for a
    :class:`vptq.runtime.trainable.TrainableQuantizedLinear`; afterwards the original modules are
    put back. If the loss of the rounded fine-tuned values (codebooks, scale/bias and norm weights
    rounded to float16, as a float16 checkpoint stores them) is below the loss before, they are
    kept: ``quantized[name]`` is replaced by the fine-tuned weight, the Linear's weight set to its
    ``dequantize()`` and the norm weights to their rounded values. Otherwise the block and
    ``quantized`` are left exactly as they were. Deterministic for a given ``settings.seed``,
    ``block_index`` and thread count. The block must be float32.
    """
    import torch

    from ..runtime.trainable import TrainableQuantizedLinear

    t0 = time.perf_counter()
    if not isinstance(settings, BlockFinetune):
        raise TypeError(f"settings: expected a BlockFinetune, got {type(settings).__name__}")
    if not isinstance(block, torch.nn.Module):
        raise TypeError(f"block: expected a torch.nn.Module, got {type(block).__name__}")
    if isinstance(block_index, bool) or not isinstance(block_index, int) or block_index < 0:
        raise InputError(f"block_index: expected an int >= 0, got {block_index!r}")
    if len(inputs) != len(targets) or not inputs:
        raise InputError(f"inputs/targets: expected the same non-zero number of batches, got {len(inputs)} "
                         f"and {len(targets)}")
    bad = sorted({str(p.dtype) for p in block.parameters() if p.dtype != torch.float32})
    if bad:
        raise InputError(f"block: fine-tuning needs a float32 block, got parameters of dtype {bad}")
    n_val = settings.val_batches
    if n_val >= len(inputs):
        raise InputError(f"BlockFinetune.val_batches: {n_val} held-out batches leave none of the {len(inputs)} "
                         "calibration batches to train on")
    train_idx = list(range(len(inputs) - n_val))
    eval_idx = list(range(len(inputs) - n_val, len(inputs))) if n_val else train_idx

    # where each quantized Linear sits in the block
    slots: dict[str, tuple[Any, str, Any]] = {}
    by_id = {id(m): rel for rel, m in block.named_modules()}
    for name, q in quantized.items():
        if not isinstance(q, QuantizedWeight):
            continue
        lin = linears.get(name)
        if lin is None or id(lin) not in by_id:
            raise InputError(f"layer {name}: not a Linear module of this block")
        rel = by_id[id(lin)]
        parent_name, _, leaf = rel.rpartition(".")
        slots[name] = (block.get_submodule(parent_name) if parent_name else block, leaf, lin)

    norms = block_norm_parameters(block) if settings.train_norms else {}
    norm_before = {n: p.detach().clone() for n, p in norms.items()}
    grad_flags = {id(p): p.requires_grad for p in block.parameters()}
    was_training = block.training

    denom = sum(float((_target(targets[j]).double() ** 2).sum()) for j in eval_idx)
    denom = denom if denom > 0 else 1.0
    train_ms = sum(float((_target(targets[j]).double() ** 2).sum()) for j in train_idx)
    train_ms /= sum(_target(targets[j]).numel() for j in train_idx)
    train_ms = train_ms if train_ms > 0 else 1.0

    loss_before = _sq_error(block, inputs, targets, eval_idx) / denom
    # the training loss starts near 1 in every block, whatever its error: Adam's eps acts alike everywhere
    loss_unit = train_ms * (loss_before if loss_before > 0 else 1.0)
    trainables: dict[str, Any] = {}
    steps_done = 0
    best_step = 0
    n_params = 0
    loss_ft = math.inf
    kept = False
    new_weights: dict[str, QuantizedWeight] = {}
    try:
        block.eval()  # no dropout: the loss is that of the inference block
        for p in block.parameters():
            p.requires_grad_(False)
        for name, (parent, leaf, lin) in slots.items():
            t = TrainableQuantizedLinear(quantized[name], None if lin.bias is None else lin.bias.detach())
            trainables[name] = t
            setattr(parent, leaf, t)
        codebooks, scales = [], []
        for t in trainables.values():
            codebooks += [p for p in (t.centroids, t.res_centroids, t.outlier_centroids) if p is not None]
            if t.weight_scale is not None:
                scales += [t.weight_scale, t.weight_bias]
            if not settings.train_scale and t.weight_scale is not None:
                t.weight_scale.requires_grad_(False)
                t.weight_bias.requires_grad_(False)
        groups = [{"params": codebooks, "lr": settings.lr}]
        if settings.train_scale and scales:
            groups.append({"params": scales, "lr": settings.scale_lr})
        if norms:
            for p in norms.values():
                p.requires_grad_(True)
            groups.append({"params": list(norms.values()), "lr": settings.norm_lr})
        groups = [g for g in groups if g["params"]]
        trained = [p for g in groups for p in g["params"]]
        n_params = sum(p.numel() for p in trained)

        def snapshot() -> list[Any]:
            return [p.detach().clone() for p in trained]

        def restore(values: list[Any]) -> None:
            with torch.no_grad():
                for p, v in zip(trained, values, strict=True):
                    p.copy_(v)

        best = snapshot()
        best_loss = loss_before
        if settings.steps > 0 and trained:
            opt = torch.optim.Adam(groups)
            base = [g["lr"] for g in opt.param_groups]
            rng = np.random.default_rng([settings.seed, block_index])
            order: list[int] = []
            with torch.enable_grad():
                for step in range(settings.steps):
                    if not order:
                        order = [train_idx[k] for k in rng.permutation(len(train_idx))]
                    j = order.pop(0)
                    factor = _lr_factor(settings.schedule, step, settings.steps)
                    for g, lr in zip(opt.param_groups, base, strict=True):
                        g["lr"] = lr * factor
                    h, kw = inputs[j]
                    y = _output(block(h, **kw))
                    loss = torch.mean((y - _target(targets[j])) ** 2) / loss_unit
                    if not bool(torch.isfinite(loss)):
                        break
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    steps_done = step + 1
                    if settings.eval_every and steps_done % settings.eval_every == 0 and steps_done < settings.steps:
                        val = _sq_error(block, inputs, targets, eval_idx) / denom
                        if val < best_loss:
                            best, best_loss, best_step = snapshot(), val, steps_done
            if settings.eval_every:  # the last values compete with the earlier evaluations
                val = _sq_error(block, inputs, targets, eval_idx) / denom
                if val < best_loss:
                    best, best_loss, best_step = snapshot(), val, steps_done
            else:
                best, best_step = snapshot(), steps_done
            restore(best)
        if best_step > 0:
            # round as the checkpoint stores the values, then measure what would be kept
            with torch.no_grad():
                for p in trained:
                    p.copy_(p.to(torch.float16).to(p.dtype))
            if all(bool(torch.isfinite(p).all()) for p in trained):
                loss_ft = _sq_error(block, inputs, targets, eval_idx) / denom
        else:
            loss_ft = loss_before
        kept = best_step > 0 and loss_ft < loss_before
        if kept:
            for name, t in trainables.items():
                q = t.to_quantized_weight(round_to="float16")
                old = quantized[name]
                q.config = old.config
                q.proxy_loss, q.relative_proxy_loss = old.proxy_loss, old.relative_proxy_loss
                q.stats = {**old.stats, "finetuned": True}
                new_weights[name] = q
    finally:
        for parent, leaf, lin in slots.values():
            setattr(parent, leaf, lin)
        for p in block.parameters():
            p.requires_grad_(grad_flags.get(id(p), p.requires_grad))
        block.train(was_training)
        if not kept:
            with torch.no_grad():
                for n, p in norms.items():
                    p.copy_(norm_before[n])
    if kept:
        with torch.no_grad():
            for name, q in new_weights.items():
                lin = slots[name][2]
                lin.weight.copy_(torch.from_numpy(q.dequantize()).to(lin.weight.dtype))
                quantized[name] = q
    return FinetuneStats(
        loss_before=loss_before, loss_finetuned=loss_ft, loss_after=loss_ft if kept else loss_before, kept=kept,
        steps=steps_done, best_step=best_step if kept else 0, seconds=time.perf_counter() - t0,
        train_batches=len(train_idx), eval_batches=len(eval_idx), parameters=n_params,
    )
