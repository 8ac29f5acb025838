"""Quantization configuration for one Linear layer, validated on construction."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, ClassVar

from .errors import InputError

SUPPORTED_VECTOR_LENS = tuple(range(2, 17))
MAX_CENTROIDS = 65536

# Community configurations of the official release (index bits per weight in the comment).
PRESETS: dict[str, dict[str, Any]] = {
    "v8-k65536-65536": {"vector_len": 8, "num_centroids": 65536, "num_res_centroids": 65536},  # 4
    "v8-k65536-4096": {"vector_len": 8, "num_centroids": 65536, "num_res_centroids": 4096},  # 3.5
    "v8-k65536-256": {"vector_len": 8, "num_centroids": 65536, "num_res_centroids": 256},  # 3
    "v12-k65536-4096": {"vector_len": 12, "num_centroids": 65536, "num_res_centroids": 4096},  # 2.33
    "v8-k1024-512": {"vector_len": 8, "num_centroids": 1024, "num_res_centroids": 512},  # 2.375
    "v8-k512-512": {"vector_len": 8, "num_centroids": 512, "num_res_centroids": 512},  # 2.25
    "v8-k65536-0": {"vector_len": 8, "num_centroids": 65536},  # 2
    "v16-k65536-65536": {"vector_len": 16, "num_centroids": 65536, "num_res_centroids": 65536},  # 2
    "v8-k256-256": {"vector_len": 8, "num_centroids": 256, "num_res_centroids": 256},  # 2
    "v12-k4096-4096": {"vector_len": 12, "num_centroids": 4096, "num_res_centroids": 4096},  # 2
    "v6-k4096-0": {"vector_len": 6, "num_centroids": 4096},  # 2
    "v8-k32768-0": {"vector_len": 8, "num_centroids": 32768},  # 1.875
    "v8-k16384-0": {"vector_len": 8, "num_centroids": 16384},  # 1.75
    "v8-k4096-0": {"vector_len": 8, "num_centroids": 4096},  # 1.5
    "v16-k65536-256": {"vector_len": 16, "num_centroids": 65536, "num_res_centroids": 256},  # 1.5
    # Paper (Table 8) configurations with outliers and groups.
    "paper-llama2-7b-2.26": {
        "vector_len": 12, "num_centroids": 4096, "num_res_centroids": 4096, "outlier_percent": 1.0,
        "outlier_vector_len": 4, "outlier_centroids": 8192, "group_num": 4,
    },
    "paper-llama3-8b-2.08": {
        "vector_len": 12, "num_centroids": 4096, "num_res_centroids": 4096, "outlier_percent": 1.0,
        "outlier_vector_len": 4, "outlier_centroids": 4096, "group_num": 1,
    },
}

_NAME_RE = re.compile(r"^v(\d+)-k(\d+)-(\d+)(?:-woft)?$")


def _is_pow2(k: int) -> bool:
    return k >= 2 and (k & (k - 1)) == 0


def _check_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"QuantConfig.{name}: expected an int, got {type(value).__name__} ({value!r})")
    return value


@dataclass(frozen=True)
class QuantConfig:
    """VPTQ settings for one Linear layer (names follow the official per-layer config).

    Vectors are ``vector_len`` consecutive output rows of one input column. The main
    codebook has ``num_centroids`` entries; ``num_res_centroids > 0`` adds a residual
    codebook; ``outlier_percent > 0`` gives the input columns with the largest Hessian
    diagonal their own codebook (``outlier_vector_len``, ``outlier_centroids``);
    ``group_num`` codebooks cover consecutive groups of the remaining columns.
    """

    vector_len: int
    num_centroids: int
    num_res_centroids: int = 0
    outlier_percent: float = 0.0
    outlier_vector_len: int = 4
    outlier_centroids: int = 0
    group_num: int = 1
    enable_norm: bool = True
    enable_perm: bool = True
    block_size: int = 128
    kmeans_iters: int = 100
    kmeans_tol: float = 1e-5
    seed: int = 0
    percdamp: float = 0.01
    #: optimise the true proxy loss in normalised space (S·H·S) instead of the reference's H.
    norm_aware_hessian: bool = True
    #: False = plain Hessian-weighted k-means VQ without second-order error feedback (ablation).
    error_feedback: bool = True

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = PRESETS

    def __post_init__(self) -> None:
        for name in ("vector_len", "num_centroids", "num_res_centroids", "outlier_vector_len",
                     "outlier_centroids", "group_num", "block_size", "kmeans_iters", "seed"):
            _check_int(name, getattr(self, name))
        for name in ("enable_norm", "enable_perm", "norm_aware_hessian", "error_feedback"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"QuantConfig.{name}: expected a bool, got {getattr(self, name)!r}")
        for name in ("outlier_percent", "kmeans_tol", "percdamp"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"QuantConfig.{name}: expected a number, got {value!r}")
            if not math.isfinite(value):
                raise InputError(f"QuantConfig.{name}: expected a finite number, got {value!r}")
        if self.vector_len not in SUPPORTED_VECTOR_LENS:
            raise InputError(f"QuantConfig.vector_len: expected an int in [2, 16], got {self.vector_len}")
        if not (_is_pow2(self.num_centroids) and self.num_centroids <= MAX_CENTROIDS):
            raise InputError(
                f"QuantConfig.num_centroids: expected a power of two in [2, 65536], got {self.num_centroids}")
        if self.num_res_centroids != 0 and not (
                _is_pow2(self.num_res_centroids) and self.num_res_centroids <= MAX_CENTROIDS):
            raise InputError("QuantConfig.num_res_centroids: expected 0 (no residual) or a power of two in "
                             f"[2, 65536], got {self.num_res_centroids}")
        if not 0 <= self.outlier_percent < 100:
            raise InputError(f"QuantConfig.outlier_percent: expected a value in [0, 100), got {self.outlier_percent}")
        if self.outlier_percent > 0:
            if self.outlier_vector_len not in SUPPORTED_VECTOR_LENS:
                raise InputError("QuantConfig.outlier_vector_len: expected an int in [2, 16], got "
                                 f"{self.outlier_vector_len}")
            if not (_is_pow2(self.outlier_centroids) and self.outlier_centroids <= MAX_CENTROIDS):
                raise InputError("QuantConfig.outlier_centroids: outlier_percent > 0 needs a power of two in "
                                 f"[2, 65536], got {self.outlier_centroids}")
        if self.group_num < 1:
            raise InputError(f"QuantConfig.group_num: expected >= 1, got {self.group_num}")
        if self.block_size < 1:
            raise InputError(f"QuantConfig.block_size: expected >= 1, got {self.block_size}")
        if self.kmeans_iters < 0:
            raise InputError(f"QuantConfig.kmeans_iters: expected >= 0, got {self.kmeans_iters}")
        if self.kmeans_tol < 0:
            raise InputError(f"QuantConfig.kmeans_tol: expected >= 0, got {self.kmeans_tol}")
        if not 0 <= self.seed < 2**64:
            raise InputError(f"QuantConfig.seed: expected an int in [0, 2**64), got {self.seed}")
        if not 0 < self.percdamp <= 10:
            raise InputError(f"QuantConfig.percdamp: expected a value in (0, 10], got {self.percdamp}")

    @property
    def has_outliers(self) -> bool:
        return self.outlier_percent > 0

    @property
    def index_bits(self) -> float:
        """Index bits per weight of the grouped (non-outlier) part: (log2 k1 + log2 k2) / v."""
        bits = math.log2(self.num_centroids)
        if self.num_res_centroids:
            bits += math.log2(self.num_res_centroids)
        return bits / self.vector_len

    @property
    def name(self) -> str:
        """Community-style name ``v{v}-k{k1}-{k2}`` (outlier/group settings not included)."""
        return f"v{self.vector_len}-k{self.num_centroids}-{self.num_res_centroids}"

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> QuantConfig:
        """Config by name: a key of ``QuantConfig.PRESETS`` or any ``v{v}-k{k1}-{k2}[-woft]``.

        Keyword overrides replace individual fields (e.g. ``seed=1``).
        """
        if not isinstance(name, str):
            raise TypeError(f"QuantConfig.preset: expected a str, got {type(name).__name__}")
        if name in PRESETS:
            params = dict(PRESETS[name])
        else:
            m = _NAME_RE.match(name)
            if not m:
                raise InputError(f"unknown preset {name!r}: expected one of {sorted(PRESETS)} or a name "
                                 "like 'v8-k256-256'")
            params = {"vector_len": int(m[1]), "num_centroids": int(m[2]), "num_res_centroids": int(m[3])}
        unknown = set(overrides) - {f.name for f in fields(cls)}
        if unknown:
            raise TypeError(f"QuantConfig.preset: unknown fields {sorted(unknown)}")
        params.update(overrides)
        return cls(**params)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> QuantConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise InputError(f"QuantConfig.from_dict: unknown keys {sorted(unknown)}")
        return cls(**d)

    def replace(self, **changes: Any) -> QuantConfig:
        """A copy with some fields changed (validated)."""
        return replace(self, **changes)
