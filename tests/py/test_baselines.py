"""vptq.baselines: RTN and GPTQ scalar quantizers through the Python API."""

from __future__ import annotations

import numpy as np
import pytest

import vptq
from vptq.quant.baselines import ScalarQuantized, gptq, rtn
from vptq.quant.hessian import Hessian, proxy_loss


def _weights(M: int, N: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.02 * rng.standard_normal((M, N)) * rng.uniform(0.5, 2.0, size=(M, 1))).astype(np.float32)


def _hessian(N: int, seed: int, rows: int = 400) -> Hessian:
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((rows, N))
    x = np.empty_like(z)
    prev = np.zeros(rows)
    for j in range(N):
        prev = 0.9 * prev + z[:, j]
        x[:, j] = prev * (1 + j % 4)
    h = Hessian(N)
    h.add_batch(x)
    return h


def _numpy_dequant(q: ScalarQuantized) -> np.ndarray:
    g = q.g_idx
    return ((q.codes.astype(np.float32) - q.zero[:, g]) * q.scale[:, g]).astype(np.float32)


@pytest.mark.parametrize(("bits", "group_size"), [(2, 128), (3, 32), (4, 48), (8, -1), (1, 16)])
def test_rtn_round_trip_and_error_bound(bits: int, group_size: int) -> None:
    M, N = 24, 200
    W = _weights(M, N, bits)
    q = rtn(W, bits, group_size)
    gs = N if group_size == -1 else min(group_size, N)
    assert q.method == "rtn"
    assert q.group_size == gs
    assert q.codes.dtype == np.uint8
    assert q.codes.shape == (M, N)
    assert q.scale.shape == q.zero.shape == (M, -(-N // gs))
    assert q.codes.max() <= 2**bits - 1
    np.testing.assert_array_equal(q.g_idx, np.arange(N) // gs)
    Wh = q.dequantize()
    assert Wh.dtype == np.float32
    np.testing.assert_array_equal(Wh, _numpy_dequant(q))
    step = q.scale[:, q.g_idx]
    assert np.all(np.abs(W - Wh) <= 0.5 * step * (1 + 1e-5) + 1e-12)
    assert q.proxy_loss is None


def test_rtn_exact_on_grid_values() -> None:
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 16, size=(5, 64))
    codes[:, ::16] = 0
    codes[:, 1::16] = 15
    W = ((codes - 6) * 0.125).astype(np.float32)
    q = rtn(W, 4, 16)
    np.testing.assert_array_equal(q.codes, codes)
    np.testing.assert_array_equal(q.dequantize(), W)


def test_bits_per_weight_is_honest() -> None:
    M, N = 64, 256
    W = _weights(M, N, 2)
    assert rtn(W, 2, 128).bits_per_weight == pytest.approx(2 + 32 / 128)
    assert rtn(W, 3, -1).bits_per_weight == pytest.approx(3 + 32 / N)
    assert rtn(W, 2, 100).bits_per_weight == pytest.approx(2 + 32 * 3 / N)  # last group shorter
    h = _hessian(N, 3)
    g = gptq(W, h, 2, 128, act_order=True)
    assert not g.g_idx_is_implicit
    assert g.bits_per_weight == pytest.approx(2 + 32 / 128 + 32 / M)
    assert gptq(W, h, 2, 128, act_order=False).bits_per_weight == pytest.approx(2 + 32 / 128)


def test_gptq_beats_rtn_and_reports_proxy_loss() -> None:
    M, N = 48, 192
    W = _weights(M, N, 4)
    h = _hessian(N, 5)
    H = h.matrix
    r = rtn(W, 2, 64, H=h)
    g = gptq(W, h, 2, 64)
    g_arr = gptq(W, H, 2, 64)
    np.testing.assert_array_equal(g.codes, g_arr.codes)
    assert g.method == "gptq"
    assert g.damp == pytest.approx(0.01)
    assert r.proxy_loss == pytest.approx(proxy_loss(W, r.dequantize(), H))
    assert g.proxy_loss == pytest.approx(proxy_loss(W, g.dequantize(), H))
    assert g.proxy_loss < 0.7 * r.proxy_loss
    # Groups are consecutive in act-order (descending diagonal) order.
    perm = np.argsort(-np.diag(H), kind="stable")
    np.testing.assert_array_equal(g.g_idx[perm], np.arange(N) // 64)
    np.testing.assert_array_equal(g.dequantize(), _numpy_dequant(g))


def test_gptq_with_identity_hessian_equals_rtn() -> None:
    W = _weights(16, 96, 6)
    for act_order in (False, True):
        g = gptq(W, np.eye(96), 3, 32, act_order=act_order, block_size=20)
        r = rtn(W, 3, 32)
        np.testing.assert_array_equal(g.codes, r.codes)
        np.testing.assert_array_equal(g.scale, r.scale)
        np.testing.assert_array_equal(g.zero, r.zero)


def test_non_contiguous_and_float64_inputs_match_contiguous_copies() -> None:
    W = _weights(40, 64, 7).astype(np.float64)
    h = _hessian(40, 8)
    Wt = W.T  # (64, 40), Fortran-ordered view
    a = gptq(Wt, h, 3, 16)
    b = gptq(np.ascontiguousarray(Wt, dtype=np.float32), h, 3, 16)
    np.testing.assert_array_equal(a.codes, b.codes)
    assert a.proxy_loss == b.proxy_loss
    c = rtn(W[::-1], 2, 16)
    d = rtn(np.ascontiguousarray(W[::-1], dtype=np.float32), 2, 16)
    np.testing.assert_array_equal(c.codes, d.codes)


def test_thread_count_independent() -> None:
    W = _weights(100, 128, 9)
    h = _hessian(128, 10)
    prev = vptq.get_num_threads()
    try:
        vptq.set_num_threads(1)
        a = gptq(W, h, 2, 32, block_size=32)
        vptq.set_num_threads(2)
        b = gptq(W, h, 2, 32, block_size=32)
    finally:
        vptq.set_num_threads(prev)
    np.testing.assert_array_equal(a.codes, b.codes)
    np.testing.assert_array_equal(a.scale, b.scale)
    assert a.proxy_loss == b.proxy_loss


def test_bad_inputs() -> None:
    W = _weights(4, 16, 0)
    H = np.eye(16)
    with pytest.raises(ValueError, match=r"bits: expected an int in \[1, 8\], got 0"):
        rtn(W, 0)
    with pytest.raises(ValueError, match="got 9"):
        gptq(W, H, 9)
    with pytest.raises(TypeError, match="bits: expected an int, got float"):
        rtn(W, 2.0)  # type: ignore[arg-type]
    for gs in (0, -2):
        with pytest.raises(ValueError, match="group_size: expected a positive int or -1"):
            rtn(W, 2, gs)
    with pytest.raises(ValueError, match=r"W: expected a 2-d array, got shape \(16,\)"):
        rtn(W[0], 2)
    with pytest.raises(TypeError, match="W: expected dtype float16/float32/float64, got int32"):
        rtn(W.astype(np.int32), 2)
    bad = W.copy()
    bad[1, 3] = np.inf
    with pytest.raises(ValueError, match="NaN/Inf"):
        gptq(bad, H, 2)
    with pytest.raises(ValueError, match=r"W: expected a non-empty array"):
        rtn(np.zeros((0, 16), np.float32), 2)
    with pytest.raises(ValueError, match=r"H: expected shape \(16, 16\) to match W of shape \(4, 16\), got \(8, 8\)"):
        gptq(W, np.eye(8), 2)
    with pytest.raises(ValueError, match=r"Hessian has in_features=8 but W has shape \(4, 16\)"):
        rtn(W, 2, H=Hessian(8))
    with pytest.raises(ValueError, match="block_size"):
        gptq(W, H, 2, block_size=0)
    with pytest.raises(TypeError, match="act_order"):
        gptq(W, H, 2, act_order="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="percdamp"):
        gptq(W, H, 2, percdamp=-1.0)
    with pytest.raises(ValueError, match="all zero"):
        gptq(W, np.zeros((16, 16)), 2)
    with pytest.raises(TypeError, match="numpy array or a torch tensor"):
        gptq(W, [[1.0]], 2)


def test_torch_weights() -> None:
    torch = pytest.importorskip("torch")
    W = torch.from_numpy(_weights(8, 32, 11)).to(torch.bfloat16)
    q = rtn(W, 4, 16)
    ref = rtn(W.float().numpy(), 4, 16)
    np.testing.assert_array_equal(q.codes, ref.codes)
    H = torch.eye(32, dtype=torch.float64)
    g = gptq(W, H, 4, 16, act_order=False)
    np.testing.assert_array_equal(g.codes, ref.codes)
