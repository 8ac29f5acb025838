"""Input conversion shared by the vptq Python API.

Every public function turns its array arguments into C-contiguous numpy arrays of the exact
dtype the C++ core wants with :func:`as_float_array` (numpy arrays and torch tensors accepted,
torch is never imported here), so the bindings can refuse anything else without copying.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_NUMPY_FLOATS = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))
_TORCH_HALF = ("torch.float16", "torch.bfloat16")
_TORCH_FLOATS = (*_TORCH_HALF, "torch.float32", "torch.float64")
_EXPECTED = "float16/float32/float64"


def _is_tensor_like(x: Any) -> bool:
    return not isinstance(x, np.ndarray) and all(hasattr(x, a) for a in ("detach", "cpu", "numpy"))


def tensor_to_numpy(x: Any, what: str) -> np.ndarray:
    """numpy form of a numpy array (as is), a numpy scalar or a torch tensor of any dtype (moved to
    the CPU, bfloat16 widened to float32: numpy has none). ``what`` names the argument in the
    TypeError raised for anything else."""
    if isinstance(x, np.ndarray):
        return x
    if _is_tensor_like(x):
        t = x.detach().cpu()
        if str(t.dtype) == "torch.bfloat16":
            t = t.float()
        return np.asarray(t.numpy())
    if isinstance(x, np.generic):
        return np.asarray(x)
    raise TypeError(f"{what}: expected a numpy array or a torch tensor, got {type(x).__name__}")


def _to_numpy(x: Any, name: str) -> np.ndarray:
    if _is_tensor_like(x):
        dt = str(getattr(x, "dtype", "unknown"))
        if dt not in _TORCH_FLOATS:
            raise TypeError(f"{name}: expected a tensor of dtype {_EXPECTED} (or bfloat16), got {dt}")
        if dt == "torch.float16":  # widened like bfloat16, for uniformity
            x = x.detach().cpu().float()
    elif isinstance(x, np.generic):
        raise TypeError(f"{name}: expected a numpy array or a torch tensor, got {type(x).__name__}")
    return tensor_to_numpy(x, name)


def as_float_array(
    x: Any,
    name: str,
    ndim: int | None = None,
    dtype: type[np.floating] | np.dtype | None = np.float32,
    *,
    allow_empty: bool = False,
) -> np.ndarray:
    """Return ``x`` as a C-contiguous, finite float array of ``dtype``.

    ``x`` is a numpy array or a torch tensor (any device; bfloat16/float16 tensors are
    widened to float32 first). ``dtype=None`` keeps float32/float64 and widens float16
    to float32. No copy is made when ``x`` already is a C-contiguous array of ``dtype``.

    Raises TypeError for other types or non-float dtypes, ValueError for a wrong ``ndim``,
    zero size (unless ``allow_empty``) or NaN/Inf (also after narrowing to ``dtype``).
    """
    a = _to_numpy(x, name)
    if a.dtype not in _NUMPY_FLOATS:
        raise TypeError(f"{name}: expected dtype {_EXPECTED}, got {a.dtype}")
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-d array, got shape {a.shape}")
    if a.size == 0 and not allow_empty:
        raise ValueError(f"{name}: expected a non-empty array, got shape {a.shape}")
    if dtype is None:
        target = a.dtype if a.dtype != np.float16 else np.dtype(np.float32)
    else:
        target = np.dtype(dtype)
        if target not in _NUMPY_FLOATS[1:]:
            raise ValueError(f"as_float_array: dtype must be float32, float64 or None, got {target}")
    # Overflow in the cast is reported below as a ValueError; a float64 sum of float32 values
    # cannot overflow, so a finite sum proves every element finite (fast path, no temporary).
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.ascontiguousarray(a, dtype=target)
        total = np.sum(out, dtype=np.float64) if out.size else 0.0
    if not np.isfinite(total):
        bad = ~np.isfinite(out)
        if bad.any():
            first = np.unravel_index(int(np.argmax(bad)), out.shape)
            where = tuple(int(i) for i in first)
            if np.isfinite(a[where]):
                raise ValueError(f"{name}: value {a[where]!r} at index {where} overflows {target}")
            raise ValueError(
                f"{name}: expected finite values, got {int(bad.sum())} NaN/Inf (first at index {where})"
            )
    return out


def as_square_matrix(H: Any, n: int | None = None, name: str = "H") -> np.ndarray:
    """Return ``H`` as a C-contiguous, finite float64 ``[n, n]`` array (any square size if ``n`` is None)."""
    Hm = as_float_array(H, name, ndim=2, dtype=np.float64)
    if Hm.shape[0] != Hm.shape[1]:
        raise ValueError(f"{name}: expected a square matrix, got shape {Hm.shape}")
    if n is not None and Hm.shape[0] != n:
        raise ValueError(f"{name}: expected shape ({n}, {n}), got {Hm.shape}")
    return Hm


def check_int(value: Any, name: str, lo: int | None = None, hi: int | None = None) -> int:
    """Return ``value`` as an int (TypeError for non-integers and bools), checked against [lo, hi]."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    v = int(value)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        lo_s = "-inf" if lo is None else str(lo)
        hi_s = "inf" if hi is None else str(hi)
        raise ValueError(f"{name}: expected an int in [{lo_s}, {hi_s}], got {v}")
    return v


def check_float(value: Any, name: str, lo: float | None = None) -> float:
    """Return ``value`` as a finite float (TypeError for non-numbers and bools), checked to be >= lo."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name}: expected a float, got {type(value).__name__}")
    v = float(value)
    if not np.isfinite(v) or (lo is not None and v < lo):
        raise ValueError(f"{name}: expected a finite float{'' if lo is None else f' >= {lo}'}, got {v}")
    return v
