"""Differentiable VPTQ Linear for fine-tuning the continuous part of a quantized weight.

:class:`TrainableQuantizedLinear` holds a :class:`vptq.QuantizedWeight` as torch tensors: the
indices (main, residual, outlier) and the act-order permutation are fixed integer buffers, while
everything the official format stores as floats is a ``torch.nn.Parameter``:

========================  ===========================  ===================================
parameter                 shape                        official tensor
========================  ===========================  ===================================
``centroids``             ``[G, k1, v]``               ``centroids.weight``
``res_centroids``         ``[G, k2, v]`` (residual)    ``res_centroids.weight``
``outlier_centroids``     ``[k0, v0]`` (outliers)      ``outlier_centroids.weight``
``weight_scale``          ``[N]`` (``enable_norm``)    ``weight_scale``
``weight_bias``           ``[N]`` (``enable_norm``)    ``weight_bias``
========================  ===========================  ===================================

``forward(x)`` rebuilds Ŵ with differentiable gathers (``index_select``; the backward is a
scatter-add, so codebook entries no index uses get exactly zero gradient, and no one-hot matrix
is ever formed) and returns ``x @ Ŵᵀ + bias``. In float32 the rebuilt Ŵ is bit-identical to
:meth:`vptq.QuantizedWeight.dequantize` (same gathers, same ``main + residual`` sum, same
``Q · scale + bias`` per input column, same row-padding trim, outliers first, same permutation).
The layer bias is a fixed buffer, like in :class:`vptq.runtime.torch.QuantizedLinear`.

Parameters are float32 by default (float64 is accepted, e.g. for ``gradcheck``). Exporting with
:meth:`TrainableQuantizedLinear.to_quantized_weight` keeps the float32 values; saving a checkpoint
(``QuantizedWeight.state_dict`` / ``vptq.save_quantized``) rounds codebooks and scale/bias to the
checkpoint's storage dtype (float16 by default). That rounding is the only loss: indices and
permutation are carried over unchanged, so a layer trained for zero steps saves bit-identically.

:func:`make_trainable` swaps the inference modules of a model loaded with :func:`vptq.load_model`
for trainable ones, :func:`freeze` swaps them back and returns the ``QuantizedWeight`` of each
layer for :func:`vptq.save_quantized`.

This module needs PyTorch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

try:
    import torch
    from torch import nn
    from torch.nn import functional as F
except ImportError as e:  # pragma: no cover - exercised only without torch
    raise ImportError("vptq.runtime.trainable needs PyTorch: pip install 'vptq[torch]'") from e

from ..quant.quantize import QuantizedWeight

__all__ = ["TrainableQuantizedLinear", "freeze", "make_trainable"]

_PARAM_DTYPES = (torch.float32, torch.float64)
_ROUND_DTYPES = {"float16": np.float16, "float32": np.float32}
# Every value an index can take (uint16) fits in int32, which index_select accepts.
_INDEX_DTYPE = torch.int32


def _inference_class() -> type:
    """``vptq.runtime.torch.QuantizedLinear`` (built lazily by that module)."""
    from . import torch as vtorch

    return vtorch.QuantizedLinear


def _check_param_dtype(dtype: Any) -> torch.dtype:
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype: expected a torch.dtype, got {type(dtype).__name__}")
    if dtype not in _PARAM_DTYPES:
        raise ValueError(f"dtype: expected torch.float32 or torch.float64, got {dtype}")
    return dtype


def _float_param(a: np.ndarray | None, dtype: torch.dtype) -> nn.Parameter | None:
    if a is None:
        return None
    return nn.Parameter(torch.from_numpy(np.array(a, dtype=np.float32)).to(dtype))


def _index_buffer(a: np.ndarray | None) -> torch.Tensor | None:
    """uint16 (or int16 bit pattern) indices -> int32 tensor of the same values."""
    if a is None:
        return None
    return torch.from_numpy(np.ascontiguousarray(a).view(np.uint16).astype(np.int32))


def _layer_bias(bias: Any, M: int, dtype: torch.dtype) -> torch.Tensor | None:
    if bias is None:
        return None
    if isinstance(bias, torch.Tensor):
        t = bias.detach().cpu()
    elif isinstance(bias, np.ndarray):
        t = torch.from_numpy(np.array(bias))
    else:
        raise TypeError(f"bias: expected None, a torch.Tensor or a numpy array, got {type(bias).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"bias: expected a floating dtype, got {t.dtype}")
    if tuple(t.shape) != (M,):
        raise ValueError(f"bias: expected shape ({M},) (out_features), got {tuple(t.shape)}")
    t = t.to(dtype).clone()
    if not bool(torch.isfinite(t).all()):
        raise ValueError("bias: expected finite values, got NaN/Inf")
    return t


def _to_numpy32(t: torch.Tensor | None, name: str, round_to: type | None) -> np.ndarray | None:
    if t is None:
        return None
    a = t.detach().cpu().to(torch.float32).numpy().copy()
    if round_to is not None:
        with np.errstate(over="ignore"):
            a = a.astype(round_to).astype(np.float32)
    if not np.isfinite(a).all():
        where = "" if round_to is None else f" after rounding to {np.dtype(round_to).name}"
        raise ValueError(f"{name}: expected finite values{where}, got NaN/Inf (diverged training or a value "
                         "outside the storage dtype's range)")
    return a


class TrainableQuantizedLinear(nn.Module):
    """``y = x @ Ŵᵀ + bias`` with Ŵ rebuilt differentiably from a VPTQ weight (see module doc).

    Trainable parameters: ``centroids`` [G, k1, v], ``res_centroids`` [G, k2, v] (or None),
    ``outlier_centroids`` [k0, v0] (or None), ``weight_scale`` and ``weight_bias`` [N] (or None
    without ``enable_norm``). Fixed buffers: ``indices``/``res_indices`` [G, ceil(M/v), group_size],
    ``outlier_indices`` [ceil(M/v0), outlier_size] (int32), ``perm`` [N] (int64, permuted position
    -> original column, or None) and the layer ``bias`` [M] (or None).
    """

    in_features: int
    out_features: int

    def __init__(self, qweight: QuantizedWeight, bias: Any = None, *, dtype: torch.dtype = torch.float32) -> None:
        """qweight: a :class:`vptq.QuantizedWeight`; bias: optional layer bias [out_features]
        (torch tensor or numpy array); dtype: parameter dtype, torch.float32 (default) or float64."""
        super().__init__()
        if not isinstance(qweight, QuantizedWeight):
            raise TypeError(f"qweight: expected a vptq.QuantizedWeight, got {type(qweight).__name__}")
        dtype = _check_param_dtype(dtype)
        L = dict(qweight.layout)
        self.layout: dict[str, int] = L
        self.config = qweight.config
        self.in_features = int(L["N"])
        self.out_features = int(L["M"])
        self.register_parameter("centroids", _float_param(qweight.centroids, dtype))
        self.register_parameter("res_centroids", _float_param(qweight.res_centroids, dtype))
        self.register_parameter("outlier_centroids", _float_param(qweight.outlier_centroids, dtype))
        self.register_parameter("weight_scale", _float_param(qweight.scale, dtype))
        self.register_parameter("weight_bias", _float_param(qweight.bias, dtype))
        self.register_buffer("indices", _index_buffer(qweight.indices))
        self.register_buffer("res_indices", _index_buffer(qweight.res_indices))
        self.register_buffer("outlier_indices", _index_buffer(qweight.outlier_indices))
        perm = None if qweight.perm is None else torch.from_numpy(np.asarray(qweight.perm, dtype=np.int64).copy())
        self.register_buffer("perm", perm)
        self.register_buffer("bias", _layer_bias(bias, self.out_features, dtype))

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_quantized(
        cls, qweight: QuantizedWeight, bias: Any = None, *, dtype: torch.dtype = torch.float32
    ) -> TrainableQuantizedLinear:
        """From a :class:`vptq.QuantizedWeight` and an optional layer bias (same as the constructor)."""
        return cls(qweight, bias, dtype=dtype)

    @classmethod
    def from_quantized_linear(
        cls,
        module: nn.Module,
        qweight: QuantizedWeight,
        *,
        dtype: torch.dtype = torch.float32,
        verify: bool = True,
    ) -> TrainableQuantizedLinear:
        """Trainable twin of an inference :class:`vptq.runtime.torch.QuantizedLinear` built from ``qweight``.

        The inference module keeps only its kernel plan, so the weight it was built from must be
        given (e.g. from :func:`vptq.load_quantized_state`); its layer bias is taken from the module.
        ``verify`` checks that ``qweight`` dequantizes bit for bit to the module's weight
        (ValueError otherwise; costs two dense [out, in] float32 matrices).
        """
        qcls = _inference_class()
        if not isinstance(module, qcls):
            raise TypeError(f"module: expected a vptq.runtime.torch.QuantizedLinear, got {type(module).__name__}")
        if not isinstance(qweight, QuantizedWeight):
            raise TypeError(f"qweight: expected a vptq.QuantizedWeight, got {type(qweight).__name__}")
        shape = (int(module.out_features), int(module.in_features))
        if qweight.shape != shape:
            raise ValueError(f"qweight: expected shape {shape} (out, in) of the module, got {qweight.shape}")
        if verify and not np.array_equal(module.inner.dequantize().view(np.uint32),
                                         qweight.dequantize().view(np.uint32)):
            raise ValueError("qweight does not dequantize to the module's weight: it belongs to another layer "
                             "or checkpoint")
        bias = module.bias
        return cls(qweight, None if bias is None else bias.detach(), dtype=dtype)

    # ------------------------------------------------------------------ numerics
    def dequantize(self) -> torch.Tensor:
        """Dense Ŵ [out_features, in_features] in the parameter dtype, differentiable with respect to
        every parameter. In float32 equal bit for bit to ``to_quantized_weight().dequantize()``."""
        L = self.layout
        M, v, G, R = L["M"], L["v"], L["group_num"], L["num_indices"]
        gs, osz = L["group_size"], L["outlier_size"]

        def gather(codebook: torch.Tensor, idx: torch.Tensor, k: int) -> torch.Tensor:
            # codebook [G, k, v], idx [G, R, gs] -> vectors [G, R, gs, v]
            if G > 1:  # row of group g's entry i in the flattened [G*k, v] codebook: g*k + i
                idx = idx + torch.arange(G, dtype=idx.dtype, device=idx.device).view(G, 1, 1) * k
            return codebook.reshape(G * k, v).index_select(0, idx.reshape(-1)).view(G, R, gs, v)

        q = gather(self.centroids, self.indices, L["k1"])
        if self.res_centroids is not None:
            q = q + gather(self.res_centroids, self.res_indices, L["k2"])
        # vector (g, r, c) holds output rows r*v .. r*v+v-1 of permuted column outlier_size + g*gs + c
        q = q.permute(1, 3, 0, 2).reshape(R * v, G * gs)[:M]
        if osz > 0:
            v0, R0 = L["v0"], L["num_outlier_indices"]
            o = self.outlier_centroids.index_select(0, self.outlier_indices.reshape(-1)).view(R0, osz, v0)
            o = o.permute(0, 2, 1).reshape(R0 * v0, osz)[:M]
            q = torch.cat([o, q], dim=1)  # outlier columns come first in permuted order
        if self.perm is not None:  # W[:, perm[p]] = Q[:, p]
            q = q.index_select(1, torch.argsort(self.perm))
        if self.weight_scale is not None:
            # two roundings (no fused multiply-add), as the C++ dequantize evaluates x * s + b
            return q * self.weight_scale + self.weight_bias
        # the C++ dequantize computes x * 1 + 0, which turns -0.0 into +0.0; "+ 0.0" does the same
        return q + 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in_features), any float dtype -> (..., out_features) in x's dtype (math in the
        parameter dtype)."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"x: expected a floating dtype, got {x.dtype}")
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"x: expected shape (..., {self.in_features}), got {tuple(x.shape)}")
        W = self.dequantize()
        y = F.linear(x.to(W.dtype), W, self.bias)
        return y if y.dtype == x.dtype else y.to(x.dtype)

    # ------------------------------------------------------------------ export
    def to_quantized_weight(self, round_to: str | None = None) -> QuantizedWeight:
        """A :class:`vptq.QuantizedWeight` holding the current parameter values as float32 arrays
        (same indices, permutation and config; ``proxy_loss`` unknown).

        ``round_to='float16'`` rounds codebooks and scale/bias as a float16 checkpoint stores them,
        so the result is exactly what saving and reloading gives. Saving the unrounded weight with
        ``state_dict(dtype='float16')`` writes the same tensors. ValueError on NaN/Inf (also after
        rounding, e.g. a value beyond the float16 range).
        """
        if round_to is not None and round_to not in _ROUND_DTYPES:
            raise ValueError(f"round_to: expected None or one of {sorted(_ROUND_DTYPES)}, got {round_to!r}")
        rdt = None if round_to is None else _ROUND_DTYPES[round_to]

        def idx(t: torch.Tensor | None) -> np.ndarray | None:
            return None if t is None else t.detach().cpu().numpy().astype(np.uint16)

        qw = QuantizedWeight(
            self.layout,
            _to_numpy32(self.centroids, "centroids", rdt),
            idx(self.indices),
            res_centroids=_to_numpy32(self.res_centroids, "res_centroids", rdt),
            res_indices=idx(self.res_indices),
            outlier_centroids=_to_numpy32(self.outlier_centroids, "outlier_centroids", rdt),
            outlier_indices=idx(self.outlier_indices),
            perm=None if self.perm is None else self.perm.detach().cpu().numpy().astype(np.int64),
            scale=_to_numpy32(self.weight_scale, "weight_scale", rdt),
            bias=_to_numpy32(self.weight_bias, "weight_bias", rdt),
            config=self.config,
        )
        qw.stats = {"finetuned": True}
        return qw

    def to_quantized_linear(self, round_to: str | None = "float16") -> nn.Module:
        """An inference :class:`vptq.runtime.torch.QuantizedLinear` of the current values (rounded as
        ``to_quantized_weight(round_to)``; the default float16 makes it compute what a saved
        float16 checkpoint computes) with this layer's bias."""
        qcls = _inference_class()
        b = None if self.bias is None else self.bias.detach().cpu().to(torch.float32).numpy()
        return qcls(self.to_quantized_weight(round_to), bias=b)

    def extra_repr(self) -> str:
        L = self.layout
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, v={L['v']}, k1={L['k1']}, k2={L['k2']}, "
                f"outliers={L['outlier_size']}, groups={L['group_num']}, "
                f"norm={self.weight_scale is not None}, perm={self.perm is not None}")


# ---------------------------------------------------------------------------------- model helpers
def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, leaf, module)


def make_trainable(
    model: nn.Module,
    quantized: Mapping[str, QuantizedWeight] | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    verify: bool = True,
) -> dict[str, TrainableQuantizedLinear]:
    """Replace inference :class:`vptq.runtime.torch.QuantizedLinear` modules of ``model`` (as
    :func:`vptq.load_model` installs them) by :class:`TrainableQuantizedLinear`; returns
    {module name: new module}.

    ``quantized`` maps module names to the weights they were built from, e.g. the second item of
    :func:`vptq.load_quantized_state` on the same checkpoint; exactly those modules are replaced (a
    subset fine-tunes only some layers). Without it every QuantizedLinear is replaced and must
    carry its weight as a ``qweight`` attribute. ``verify``: see
    :meth:`TrainableQuantizedLinear.from_quantized_linear`. Only the swapped modules are touched:
    other parameters of the model keep their ``requires_grad``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if quantized is not None and not isinstance(quantized, Mapping):
        raise TypeError(f"quantized: expected a mapping name -> QuantizedWeight, got {type(quantized).__name__}")
    _check_param_dtype(dtype)
    qcls = _inference_class()
    modules = dict(model.named_modules())
    if quantized is None:
        names = [n for n, m in modules.items() if isinstance(m, qcls)]
        if not names:
            raise ValueError("model has no vptq.runtime.torch.QuantizedLinear module to make trainable")
        lacking = [n for n in names if not isinstance(getattr(modules[n], "qweight", None), QuantizedWeight)]
        if lacking:
            raise ValueError(f"QuantizedLinear modules {lacking[:5]} do not keep the QuantizedWeight they were "
                             "built from; pass quantized=vptq.load_quantized_state(path)[1]")
        todo = {n: modules[n].qweight for n in names}
    else:
        if not quantized:
            raise ValueError("quantized: expected at least one layer, got none")
        todo = {}
        for name, qw in quantized.items():
            if not isinstance(qw, QuantizedWeight):
                raise TypeError(f"quantized[{name!r}]: expected a vptq.QuantizedWeight, got {type(qw).__name__}")
            m = modules.get(name)
            if not isinstance(m, qcls):
                found = "no module" if m is None else f"a {type(m).__name__}"
                raise ValueError(  # noqa: TRY004 - a name/model mismatch, not a wrong argument type
                    f"quantized[{name!r}]: expected a vptq.runtime.torch.QuantizedLinear of the model at that name, "
                    f"found {found}")
            todo[name] = qw
    # build everything first so a failure leaves the model unchanged
    new = {
        name: TrainableQuantizedLinear.from_quantized_linear(modules[name], qw, dtype=dtype, verify=verify)
        for name, qw in todo.items()
    }
    for name, m in new.items():
        m.train(modules[name].training)
        _set_module(model, name, m)
    return new


def freeze(model: nn.Module, *, round_to: str | None = "float16") -> dict[str, QuantizedWeight]:
    """Replace every :class:`TrainableQuantizedLinear` of ``model`` by an inference
    :class:`vptq.runtime.torch.QuantizedLinear`; returns {module name: QuantizedWeight} of the current values,
    ready for :func:`vptq.save_quantized` (e.g. ``save_quantized(out, (model.config,
    model.state_dict()), freeze(model))``).

    Only the trainable layers are in the result: when :func:`make_trainable` was given a subset,
    merge in the other layers' weights before saving (``{**loaded_layers, **freeze(model)}``).
    ``round_to`` ('float16' default, 'float32' or None) rounds codebooks and scale/bias like the
    checkpoint will store them, so the frozen model computes exactly what the saved one does.
    ValueError if the model has no trainable VPTQ layer.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if round_to is not None and round_to not in _ROUND_DTYPES:
        raise ValueError(f"round_to: expected None or one of {sorted(_ROUND_DTYPES)}, got {round_to!r}")
    layers = {n: m for n, m in model.named_modules() if isinstance(m, TrainableQuantizedLinear)}
    if not layers:
        raise ValueError("model has no TrainableQuantizedLinear module to freeze")
    qcls = _inference_class()
    weights: dict[str, QuantizedWeight] = {}
    frozen: dict[str, nn.Module] = {}
    for name, m in layers.items():  # build everything first so a failure leaves the model unchanged
        qw = m.to_quantized_weight(round_to)
        b = None if m.bias is None else m.bias.detach().cpu().to(torch.float32).numpy()
        weights[name] = qw
        frozen[name] = qcls(qw, bias=b)
    for name, q in frozen.items():
        q.train(layers[name].training)
        _set_module(model, name, q)
    return weights
