"""vptq._arrays: the shared input conversion (numpy / torch -> C-contiguous finite float arrays)."""

from __future__ import annotations

import numpy as np
import pytest

from vptq._arrays import as_float_array, as_square_matrix, check_float, check_int


def test_no_copy_for_contiguous_float32() -> None:
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    out = as_float_array(x, "x", ndim=2)
    assert out is x or np.shares_memory(out, x)
    assert out.flags.c_contiguous
    x64 = x.astype(np.float64)
    assert np.shares_memory(as_float_array(x64, "x", dtype=np.float64), x64)
    assert np.shares_memory(as_float_array(x64, "x", dtype=None), x64)


@pytest.mark.parametrize("src_dtype", [np.float16, np.float32, np.float64])
def test_converts_dtype_and_layout(src_dtype: type) -> None:
    base = np.arange(30, dtype=src_dtype).reshape(5, 6)
    for view in (base[::-1], base[:, ::2], base.T, np.asfortranarray(base)):
        out = as_float_array(view, "x")
        assert out.dtype == np.float32
        assert out.flags.c_contiguous
        np.testing.assert_array_equal(out, np.ascontiguousarray(view, dtype=np.float32))
    assert as_float_array(base, "x", dtype=None).dtype == (np.float64 if src_dtype == np.float64 else np.float32)


@pytest.mark.parametrize("bad", [np.arange(4), np.array([True, False]), np.zeros(3, dtype=np.complex64),
                                 np.zeros(2, dtype=np.int8), np.zeros(2, dtype=np.longdouble)])
def test_rejects_non_float_dtypes(bad: np.ndarray) -> None:
    with pytest.raises(TypeError, match=r"x: expected dtype float16/float32/float64, got"):
        as_float_array(bad, "x")


@pytest.mark.parametrize("bad", [[1.0, 2.0], 3.0, "abc", None])
def test_rejects_non_arrays(bad: object) -> None:
    with pytest.raises(TypeError, match=r"W: expected a numpy array or a torch tensor, got"):
        as_float_array(bad, "W")


def test_shape_size_and_value_checks() -> None:
    with pytest.raises(ValueError, match=r"W: expected a 2-d array, got shape \(4,\)"):
        as_float_array(np.zeros(4, np.float32), "W", ndim=2)
    with pytest.raises(ValueError, match="non-empty"):
        as_float_array(np.zeros((0, 3), np.float32), "W")
    assert as_float_array(np.zeros((0, 3), np.float32), "W", allow_empty=True).shape == (0, 3)
    x = np.ones((3, 3), np.float32)
    x[1, 2] = np.nan
    with pytest.raises(ValueError, match=r"1 NaN/Inf \(first at index \(1, 2\)\)"):
        as_float_array(x, "x")
    x[1, 2] = -np.inf
    with pytest.raises(ValueError, match="NaN/Inf"):
        as_float_array(x, "x")
    big = np.array([1.0, 1e300], dtype=np.float64)
    with pytest.raises(ValueError, match="overflows float32"):
        as_float_array(big, "x")
    # Finite float64 values whose sum overflows are still accepted.
    huge = np.array([1e308, 1e308])
    np.testing.assert_array_equal(as_float_array(huge, "x", dtype=np.float64), huge)


def test_square_matrix() -> None:
    H = np.eye(3, dtype=np.float32)
    out = as_square_matrix(H, 3)
    assert out.dtype == np.float64
    assert out.shape == (3, 3)
    with pytest.raises(ValueError, match=r"H: expected a square matrix, got shape \(3, 4\)"):
        as_square_matrix(np.zeros((3, 4)))
    with pytest.raises(ValueError, match=r"H: expected shape \(4, 4\), got \(3, 3\)"):
        as_square_matrix(H, 4)


def test_scalar_checks() -> None:
    assert check_int(np.int64(3), "bits", 1, 8) == 3
    with pytest.raises(TypeError, match="bits: expected an int, got bool"):
        check_int(True, "bits")
    with pytest.raises(TypeError, match="float"):
        check_int(2.0, "bits")
    with pytest.raises(ValueError, match=r"bits: expected an int in \[1, 8\], got 9"):
        check_int(9, "bits", 1, 8)
    assert check_float(1, "p", 0.0) == 1.0
    with pytest.raises(ValueError, match=r">= 0\.0"):
        check_float(-0.5, "p", 0.0)
    with pytest.raises(ValueError, match="finite"):
        check_float(float("nan"), "p")
    with pytest.raises(TypeError):
        check_float("0.1", "p")


def test_torch_tensors() -> None:
    torch = pytest.importorskip("torch")
    t = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    out = as_float_array(t, "x")
    np.testing.assert_array_equal(out, t.numpy())
    assert np.shares_memory(out, t.numpy())  # no copy for a contiguous float32 CPU tensor
    g = t.clone().requires_grad_(True)
    np.testing.assert_array_equal(as_float_array(g, "x"), t.numpy())
    for dt in (torch.bfloat16, torch.float16):
        h = t.to(dt)
        out = as_float_array(h, "x")
        assert out.dtype == np.float32
        np.testing.assert_array_equal(out, h.float().numpy())
    np.testing.assert_array_equal(as_float_array(t.T, "x"), t.T.numpy())
    assert as_float_array(t.double(), "x", dtype=None).dtype == np.float64
    with pytest.raises(TypeError, match=r"x: expected a tensor of dtype .*got torch.int64"):
        as_float_array(torch.arange(3), "x")
    bad = t.clone()
    bad[0, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN/Inf"):
        as_float_array(bad, "x")
