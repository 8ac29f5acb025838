"""VPTQ quantization of one weight matrix and the quantized-weight container."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from .. import _core
from .._arrays import as_float_array, tensor_to_numpy
from ..config import QuantConfig
from ..errors import InputError
from .hessian import Hessian, hessian_for, prepare_hessian, proxy_loss

#: Keys of the official per-layer config (``quantization_config.config_for_layers[name]``).
LAYER_CONFIG_KEYS = (
    "in_features", "out_features", "vector_lens", "num_centroids", "num_res_centroids", "group_num",
    "group_size", "outlier_size", "indices_as_float", "enable_norm", "enable_perm", "bias",
    "is_indice_packed",
)
_FLOAT_DTYPES = {"float16": np.float16, "float32": np.float32}


def _as_codebook(t: Any, name: str, shape: tuple[int, ...]) -> np.ndarray:
    a = tensor_to_numpy(t, f"state dict entry {name!r}")
    if a.dtype.kind != "f":
        raise TypeError(f"state dict entry {name!r}: expected a float tensor, got dtype {a.dtype}")
    if a.shape != shape:
        raise InputError(f"state dict entry {name!r}: expected shape {shape}, got {a.shape}")
    a = np.ascontiguousarray(a, dtype=np.float32)
    if not np.isfinite(a).all():
        raise InputError(f"state dict entry {name!r} contains NaN or Inf")
    return a


def _as_bits(t: Any, name: str, shape: tuple[int, ...], dtypes: tuple[type, ...], view: type) -> np.ndarray:
    a = tensor_to_numpy(t, f"state dict entry {name!r}")
    if a.dtype.type not in dtypes:
        raise TypeError(f"state dict entry {name!r}: expected dtype {'/'.join(np.dtype(d).name for d in dtypes)}, "
                        f"got {a.dtype}")
    if a.shape != shape:
        raise InputError(f"state dict entry {name!r}: expected shape {shape}, got {a.shape}")
    return np.ascontiguousarray(a).view(view)


def _round_to(a: np.ndarray | None, dtype: type) -> np.ndarray | None:
    return None if a is None else np.ascontiguousarray(a.astype(dtype).astype(np.float32))


class QuantizedWeight:
    """A VPTQ-quantized weight matrix W[out_features, in_features].

    Holds the unpacked form: codebooks (float32, values representable in the storage dtype),
    uint16 indices, the act-order permutation and the per-input-column scale/bias.
    ``state_dict()`` gives the official packed tensors; ``dequantize()`` the dense matrix.
    """

    def __init__(
        self,
        layout: Mapping[str, int],
        centroids: np.ndarray,  # [G, k1, v] float32
        indices: np.ndarray,  # [G, ceil(M/v), group_size] uint16
        *,
        res_centroids: np.ndarray | None = None,  # [G, k2, v] float32
        res_indices: np.ndarray | None = None,  # [G, ceil(M/v), group_size] uint16
        outlier_centroids: np.ndarray | None = None,  # [k0, v0] float32
        outlier_indices: np.ndarray | None = None,  # [ceil(M/v0), outlier_size] uint16
        perm: np.ndarray | None = None,  # [N] int64: permuted position -> original column
        scale: np.ndarray | None = None,  # [N] float32 per original input column
        bias: np.ndarray | None = None,  # [N] float32 per original input column
        config: QuantConfig | None = None,
        validate: bool = True,
    ) -> None:
        self.layout: dict[str, int] = dict(_core.check_layout(dict(layout)))
        self.centroids = centroids
        self.indices = indices
        self.res_centroids = res_centroids
        self.res_indices = res_indices
        self.outlier_centroids = outlier_centroids
        self.outlier_indices = outlier_indices
        self.perm = perm
        self.scale = scale
        self.bias = bias
        self.config = config
        #: tr((W - Ŵ) H (W - Ŵ)ᵀ) with the Hessian given to quantize_weight (None if unknown).
        self.proxy_loss: float | None = None
        #: proxy_loss / tr(W H Wᵀ).
        self.relative_proxy_loss: float | None = None
        self.stats: dict[str, Any] = {}
        if (scale is None) != (bias is None):
            raise InputError("scale and bias must both be given (enable_norm) or both be None")
        if validate:
            _core.check_weights(self.layout, *self._arrays())

    # ------------------------------------------------------------------ shapes
    @property
    def in_features(self) -> int:
        return int(self.layout["N"])

    @property
    def out_features(self) -> int:
        return int(self.layout["M"])

    @property
    def shape(self) -> tuple[int, int]:
        return (self.out_features, self.in_features)

    @property
    def enable_norm(self) -> bool:
        return self.scale is not None

    @property
    def enable_perm(self) -> bool:
        return self.perm is not None

    def _arrays(self) -> tuple[Any, ...]:
        return (self.centroids, self.res_centroids, self.outlier_centroids, self.indices, self.res_indices,
                self.outlier_indices, self.perm, self.scale, self.bias)

    def __repr__(self) -> str:
        L = self.layout
        return (f"QuantizedWeight(out_features={self.out_features}, in_features={self.in_features}, "
                f"v={L['v']}, k1={L['k1']}, k2={L['k2']}, outliers={L['outlier_size']}x(v0={L['v0']}, "
                f"k0={L['k0']}), groups={L['group_num']}, bits_per_weight={self.bits_per_weight:.3f})")

    # ------------------------------------------------------------- numerics
    def dequantize(self) -> np.ndarray:
        """Dense float32 Ŵ [out_features, in_features] (design note §3.4)."""
        return _core.dequantize(self.layout, *self._arrays())

    def bits_breakdown(self, storage_bits: int = 16) -> dict[str, float]:
        """Bits of each stored part, counted as the official packed format stores them."""
        L = self.layout
        G, R, R0 = L["group_num"], L["num_indices"], L["num_outlier_indices"]
        parts = {
            "indices": G * R * L["packed_words"] * 32.0,
            "outlier_indices": R0 * L["outlier_size"] * 16.0,  # stored as int16, not bit-packed
            "codebooks": storage_bits * (G * L["k1"] * L["v"] + G * L["k2"] * L["v"] + L["k0"] * L["v0"]),
            "scale_bias": 2.0 * storage_bits * L["N"] if self.enable_norm else 0.0,
            "perm": 16.0 * L["N"] if self.enable_perm else 0.0,
        }
        return {k: float(v) for k, v in parts.items()}

    @property
    def bits_per_weight(self) -> float:
        """All stored bits (indices incl. padding, codebooks, scale/bias, perm) / (M·N)."""
        return sum(self.bits_breakdown().values()) / (self.out_features * self.in_features)

    @property
    def index_bits_per_weight(self) -> float:
        """Index bits only (incl. row/word padding) / (M·N)."""
        b = self.bits_breakdown()
        return (b["indices"] + b["outlier_indices"]) / (self.out_features * self.in_features)

    # ----------------------------------------------------------- file format
    def layer_config(self, bias: bool = False) -> dict[str, Any]:
        """The official per-layer ``config_for_layers`` entry (``bias``: the Linear has a bias)."""
        L = self.layout
        has_out = L["k0"] > 0 and L["outlier_size"] > 0
        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "vector_lens": [L["v0"] if has_out else -1, L["v"]],
            "num_centroids": [L["k0"] if has_out else -1, L["k1"]],
            "num_res_centroids": [-1, L["k2"] if L["k2"] > 0 else -1],
            "group_num": L["group_num"],
            "group_size": L["group_size"],
            "outlier_size": L["outlier_size"] if has_out else 0,
            "indices_as_float": False,
            "enable_norm": self.enable_norm,
            "enable_perm": self.enable_perm,
            "bias": bool(bias),
            "is_indice_packed": True,
        }

    def state_dict(self, dtype: str = "float16") -> dict[str, np.ndarray]:
        """Official tensors of this layer (no ``bias``, no prefix): packed int32 indices,
        int16 outlier indices and perm (uint16 bit patterns), codebooks/scale/bias in ``dtype``."""
        if dtype not in _FLOAT_DTYPES:
            raise InputError(f"state_dict dtype: expected one of {sorted(_FLOAT_DTYPES)}, got {dtype!r}")
        fdt = _FLOAT_DTYPES[dtype]
        L = self.layout
        G = L["group_num"]
        out: dict[str, np.ndarray] = {
            "centroids.weight": self.centroids.reshape(G, -1).astype(fdt),
        }
        packed = _core.pack_indices(self.indices, self.res_indices, L["index_bits"], L["res_index_bits"])
        out["indices"] = packed.view(np.int32)
        if self.res_centroids is not None:
            out["res_centroids.weight"] = self.res_centroids.reshape(G, -1).astype(fdt)
        if L["k0"] > 0 and L["outlier_size"] > 0:
            out["outlier_centroids.weight"] = self.outlier_centroids.reshape(1, -1).astype(fdt)
            out["outlier_indices"] = self.outlier_indices.reshape(1, *self.outlier_indices.shape).view(np.int16)
        if self.perm is not None:
            out["perm"] = self.perm.astype(np.uint16).view(np.int16)
        if self.scale is not None:
            out["weight_scale"] = self.scale.astype(fdt)
            out["weight_bias"] = self.bias.astype(fdt)
        return out

    @classmethod
    def from_state_dict(cls, tensors: Mapping[str, Any], layer_config: Mapping[str, Any]) -> QuantizedWeight:
        """Rebuild from official tensors (numpy arrays or torch tensors) and a per-layer config.

        Missing, mis-shaped or mis-typed tensors and out-of-range indices raise TypeError/ValueError.
        """
        if not isinstance(layer_config, Mapping):
            raise TypeError(f"layer_config: expected a mapping, got {type(layer_config).__name__}")
        missing = [k for k in LAYER_CONFIG_KEYS if k not in layer_config and k not in ("bias", "indices_as_float")]
        if missing:
            raise InputError(f"layer_config is missing keys {missing}")
        if layer_config.get("indices_as_float", False):
            raise InputError("layer_config: indices_as_float=true (legacy) is not supported")
        if not layer_config["is_indice_packed"]:
            raise InputError("layer_config: only packed indices (is_indice_packed=true) are supported")
        v0, v = (int(x) for x in layer_config["vector_lens"])
        k0, k1 = (int(x) for x in layer_config["num_centroids"])
        k2 = int(layer_config["num_res_centroids"][1])
        has_out = v0 > 1 and k0 > 0 and int(layer_config["outlier_size"]) > 0
        layout = {
            "M": int(layer_config["out_features"]), "N": int(layer_config["in_features"]),
            "v": v, "k1": k1, "k2": max(k2, 0), "v0": v0 if has_out else 0, "k0": k0 if has_out else 0,
            "group_num": int(layer_config["group_num"]), "group_size": int(layer_config["group_size"]),
            "outlier_size": int(layer_config["outlier_size"]) if has_out else 0,
        }
        L = _core.check_layout(layout)
        required = ["centroids.weight", "indices"]
        if L["k2"] > 0:
            required.append("res_centroids.weight")
        if has_out:
            required += ["outlier_centroids.weight", "outlier_indices"]
        if layer_config["enable_perm"]:
            required.append("perm")
        if layer_config["enable_norm"]:
            required += ["weight_scale", "weight_bias"]
        absent = [k for k in required if k not in tensors]
        if absent:
            raise InputError(f"state dict is missing tensors {absent}")
        G, R, N = L["group_num"], L["num_indices"], L["N"]
        centroids = _as_codebook(tensors["centroids.weight"], "centroids.weight", (G, L["k1"] * L["v"]))
        packed = _as_bits(tensors["indices"], "indices", (G, R, L["packed_words"]), (np.int32, np.uint32), np.uint32)
        idx, ridx = _core.unpack_indices(packed, L["group_size"], L["index_bits"], L["res_index_bits"])
        kw: dict[str, Any] = {}
        if L["k2"] > 0:
            kw["res_centroids"] = _as_codebook(tensors["res_centroids.weight"], "res_centroids.weight",
                                               (G, L["k2"] * L["v"])).reshape(G, L["k2"], L["v"])
            kw["res_indices"] = ridx
        if has_out:
            kw["outlier_centroids"] = _as_codebook(tensors["outlier_centroids.weight"], "outlier_centroids.weight",
                                                   (1, L["k0"] * L["v0"])).reshape(L["k0"], L["v0"])
            kw["outlier_indices"] = _as_bits(tensors["outlier_indices"], "outlier_indices",
                                             (1, L["num_outlier_indices"], L["outlier_size"]),
                                             (np.int16, np.uint16), np.uint16)[0]
        if layer_config["enable_perm"]:
            p = tensor_to_numpy(tensors["perm"], "state dict entry 'perm'")
            if p.dtype.type in (np.int16, np.uint16):
                perm = _as_bits(p, "perm", (N,), (np.int16, np.uint16), np.uint16).astype(np.int64)
            elif p.dtype.type in (np.int32, np.int64):
                perm = _as_bits(p, "perm", (N,), (np.int32, np.int64), p.dtype.type).astype(np.int64)
            else:
                raise TypeError(f"state dict entry 'perm': expected dtype int16/int64, got {p.dtype}")
            kw["perm"] = perm
        if layer_config["enable_norm"]:
            kw["scale"] = _as_codebook(tensors["weight_scale"], "weight_scale", (N,))
            kw["bias"] = _as_codebook(tensors["weight_bias"], "weight_bias", (N,))
        return cls(L, centroids.reshape(G, L["k1"], L["v"]), idx, **kw)


def quantize_weight(
    W: Any,
    H: Hessian | np.ndarray | Any,
    config: QuantConfig | str,
    *,
    storage_dtype: str = "float16",
) -> QuantizedWeight:
    """Quantize W [out_features, in_features] with VPTQ.

    ``H`` is the layer's input second moment E[x xᵀ] (a :class:`Hessian` or an
    [in_features, in_features] array); ``config`` a :class:`QuantConfig` or a preset name.
    Codebooks and scale/bias are rounded to ``storage_dtype`` so that the returned weight is
    exactly what ``state_dict()`` saves. The proxy loss is measured against the given H.
    """
    if isinstance(config, str):
        config = QuantConfig.preset(config)
    if not isinstance(config, QuantConfig):
        raise TypeError(f"config: expected a QuantConfig or preset name, got {type(config).__name__}")
    if storage_dtype not in _FLOAT_DTYPES:
        raise InputError(f"storage_dtype: expected one of {sorted(_FLOAT_DTYPES)}, got {storage_dtype!r}")
    Wf = as_float_array(W, "W", ndim=2)
    Hm = hessian_for(H, Wf.shape)
    prep = prepare_hessian(Hm, percdamp=config.percdamp, act_order=config.enable_perm)
    r = _core.vptq_quantize(
        Wf, prep.core, v=config.vector_len, k1=config.num_centroids, k2=config.num_res_centroids,
        outlier_percent=float(config.outlier_percent), v0=config.outlier_vector_len if config.has_outliers else 0,
        k0=config.outlier_centroids if config.has_outliers else 0, group_num=config.group_num,
        enable_norm=config.enable_norm, enable_perm=config.enable_perm, block_size=config.block_size,
        kmeans_iters=config.kmeans_iters, kmeans_tol=float(config.kmeans_tol), seed=config.seed,
        error_feedback=config.error_feedback, norm_aware_hessian=config.norm_aware_hessian,
    )
    fdt = _FLOAT_DTYPES[storage_dtype]
    qw = QuantizedWeight(
        r["layout"], _round_to(r["centroids"], fdt), r["indices"],
        res_centroids=_round_to(r["res_centroids"], fdt), res_indices=r["res_indices"],
        outlier_centroids=_round_to(r["outlier_centroids"], fdt), outlier_indices=r["outlier_indices"],
        perm=r["perm"], scale=_round_to(r["scale"], fdt), bias=_round_to(r["bias"], fdt),
        config=config, validate=False,
    )
    W_hat = qw.dequantize()
    qw.proxy_loss = proxy_loss(Wf, W_hat, Hm)
    base = proxy_loss(Wf, np.zeros_like(Wf), Hm)
    qw.relative_proxy_loss = qw.proxy_loss / base if base > 0 else math.nan
    qw.stats = {"kmeans_iterations": list(r["kmeans_iterations"]), "kmeans_inertia": list(r["kmeans_inertia"]),
                "damp": prep.damp}
    return qw
