"""vptq: Vector Post-Training Quantization of LLM weights, with fast CPU kernels."""

from __future__ import annotations

import os as _os

# Developer hook: load the compiled extension from a build directory
# (VPTQ_EXT_DIR=build/<dir>/cpp) instead of the installed one.
if _os.environ.get("VPTQ_EXT_DIR"):
    __path__.insert(0, _os.path.abspath(_os.environ["VPTQ_EXT_DIR"]))

from . import _core
from ._core import NumericalError
from .config import PRESETS, QuantConfig
from .errors import InputError
from .formats.checkpoint import CheckpointExistsError, load_model, load_quantized_state, save_quantized
from .models.evaluate import DecodeSpeed, PerplexityResult, decode_speed, perplexity
from .models.pipeline import quantize_model
from .quant.baselines import ScalarQuantized, gptq, rtn
from .quant.hessian import Hessian, PreparedHessian, prepare_hessian, proxy_loss
from .quant.kmeans import KMeansResult, kmeans, nearest_centroid
from .quant.quantize import QuantizedWeight, quantize_weight
from .runtime.layers import QuantizedLinear

__version__ = "0.1.0"


def set_num_threads(n: int) -> None:
    """Set the number of threads vptq's C++ parallel loops use (n >= 1)."""
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"set_num_threads: expected an int, got {type(n).__name__}")
    _core.set_num_threads(n)


def get_num_threads() -> int:
    """Number of threads vptq's C++ parallel loops use."""
    return _core.get_num_threads()


def cpu_features() -> dict[str, bool | str]:
    """CPU features the SIMD dispatcher found, plus the 'detected' and 'selected' level."""
    return dict(_core.cpu_features())


def simd_level() -> str:
    """SIMD level in use: 'scalar', 'avx2', 'avx512' or 'neon'."""
    return _core.simd_level()


def set_simd_level(level: str) -> None:
    """Force a SIMD level ('scalar', 'avx2', 'avx512'); ValueError if the CPU lacks it."""
    _core.set_simd_level(level)


__all__ = [
    "PRESETS",
    "CheckpointExistsError",
    "DecodeSpeed",
    "Hessian",
    "InputError",
    "KMeansResult",
    "NumericalError",
    "PerplexityResult",
    "PreparedHessian",
    "QuantConfig",
    "QuantizedLinear",
    "QuantizedWeight",
    "ScalarQuantized",
    "__version__",
    "cpu_features",
    "decode_speed",
    "get_num_threads",
    "gptq",
    "kmeans",
    "load_model",
    "load_quantized_state",
    "nearest_centroid",
    "perplexity",
    "prepare_hessian",
    "proxy_loss",
    "quantize_model",
    "quantize_weight",
    "rtn",
    "save_quantized",
    "set_num_threads",
    "set_simd_level",
    "simd_level",
]
