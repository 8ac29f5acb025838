"""vptq.hessian: E[x xᵀ] accumulation, prepare_hessian and proxy_loss across the Python boundary."""

from __future__ import annotations

import numpy as np
import pytest

import vptq
from vptq import _core
from vptq.quant.hessian import Hessian, PreparedHessian, prepare_hessian, proxy_loss


def _activations(rows: int, n: int, seed: int) -> np.ndarray:
    """Correlated activations with uneven channel energies."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((rows, n))
    x = np.empty_like(z)
    prev = np.zeros(rows)
    for j in range(n):
        prev = 0.8 * prev + z[:, j]
        x[:, j] = prev * (1 + j % 5)
    return x.astype(np.float32)


def test_accumulates_second_moment_over_any_batch_shape() -> None:
    n = 40
    x = _activations(60, n, 0)
    h = Hessian(n)
    h.add_batch(x[:10].reshape(2, 5, n))  # leading dims flattened
    h.add_batch(x[10])  # a single row
    h.add_batch(x[11:11].reshape(0, n))  # empty batch: no-op
    h.add_batch(x[11:30].astype(np.float64))
    h.add_batch(x[30:].astype(np.float16).astype(np.float32))
    assert h.count == 60
    assert h.in_features == n
    x_used = np.concatenate([x[:30].astype(np.float64), x[30:].astype(np.float16).astype(np.float64)])
    ref = x_used.T @ x_used / 60
    np.testing.assert_allclose(h.matrix, ref, rtol=1e-10, atol=1e-12)
    assert h.matrix.dtype == np.float64
    assert "count=60" in repr(h)


def test_non_contiguous_batches_match_contiguous_copies() -> None:
    n = 24
    x = _activations(50, n, 1)
    a, b = Hessian(n), Hessian(n)
    view = x[::-2]  # negative stride
    a.add_batch(view)
    b.add_batch(np.ascontiguousarray(view))
    np.testing.assert_array_equal(a.matrix, b.matrix)
    wide = _activations(n, 30, 2)  # transposed view: rows of wide.T are columns of wide
    c, d = Hessian(n), Hessian(n)
    c.add_batch(wide.T)
    d.add_batch(np.ascontiguousarray(wide.T))
    np.testing.assert_array_equal(c.matrix, d.matrix)


def test_merge_and_errors() -> None:
    n = 16
    x = _activations(30, n, 3)
    whole, left, right = Hessian(n), Hessian(n), Hessian(n)
    whole.add_batch(x)
    left.add_batch(x[:12])
    right.add_batch(x[12:])
    left.merge(right)
    assert left.count == 30
    np.testing.assert_allclose(left.matrix, whole.matrix, rtol=1e-12)
    with pytest.raises(ValueError, match="in_features=16, got in_features=17"):
        left.merge(Hessian(17))
    with pytest.raises(TypeError, match="expected a Hessian"):
        left.merge(np.eye(n))  # type: ignore[arg-type]


def test_bad_batches_raise_and_leave_state_unchanged() -> None:
    h = Hessian(8)
    with pytest.raises(ValueError, match="no input rows"):
        _ = h.matrix
    h.add_batch(np.ones((3, 8), np.float32))
    with pytest.raises(ValueError, match=r"x: expected shape \(\.\.\., 8\), got \(3, 7\)"):
        h.add_batch(np.ones((3, 7), np.float32))
    with pytest.raises(TypeError, match="float16/float32/float64, got int64"):
        h.add_batch(np.ones((3, 8), np.int64))
    bad = np.ones((3, 8), np.float32)
    bad[2, 5] = np.nan
    with pytest.raises(ValueError, match="NaN/Inf"):
        h.add_batch(bad)
    with pytest.raises(TypeError, match="numpy array or a torch tensor"):
        h.add_batch([[1.0] * 8])
    assert h.count == 3
    np.testing.assert_array_equal(h.matrix, np.ones((8, 8)))
    with pytest.raises(ValueError, match="in_features"):
        Hessian(0)
    with pytest.raises(TypeError, match="in_features: expected an int"):
        Hessian(8.0)  # type: ignore[arg-type]


def test_torch_batches() -> None:
    torch = pytest.importorskip("torch")
    n = 12
    x = torch.from_numpy(_activations(20, n, 4)).reshape(4, 5, n)
    h, ref = Hessian(n), Hessian(n)
    h.add_batch(x.to(torch.bfloat16))
    ref.add_batch(x.to(torch.bfloat16).float().numpy())
    np.testing.assert_array_equal(h.matrix, ref.matrix)
    h2 = Hessian(n)
    h2.add_batch(x.double().requires_grad_(True))
    xd = x.double().reshape(-1, n).numpy()
    np.testing.assert_allclose(h2.matrix, xd.T @ xd / 20, rtol=1e-12)


def _check_inverse_factor(p: PreparedHessian, tol: float) -> None:
    U = p.U.astype(np.float64)
    assert np.all(np.tril(U, -1) == 0)
    assert np.all(np.diag(U) > 0)
    resid = U.T @ U @ (p.H + p.damp * np.eye(p.n)) - np.eye(p.n)
    assert np.abs(resid).max() < tol


def test_prepare_hessian_from_accumulator_and_array() -> None:
    n = 50
    h = Hessian(n)
    h.add_batch(_activations(200, n, 5))
    H = h.matrix
    p = prepare_hessian(h)
    q = prepare_hessian(H.astype(np.float32))  # float32 arrays are widened
    np.testing.assert_array_equal(p.perm, q.perm)
    assert p.damp == pytest.approx(0.01)
    assert p.scale == pytest.approx(np.diag(H).mean())
    np.testing.assert_allclose(p.diag, np.diag(H) / np.diag(H).mean())
    assert p.perm.dtype == np.int64
    # Stable argsort of the diagonal, descending.
    np.testing.assert_array_equal(p.perm, np.argsort(-p.diag, kind="stable"))
    np.testing.assert_allclose(p.H, H[np.ix_(p.perm, p.perm)] / p.scale, rtol=1e-14)
    assert not p.dead.any()
    _check_inverse_factor(p, 1e-3)
    r = prepare_hessian(H, act_order=False, percdamp=0.1)
    np.testing.assert_array_equal(r.perm, np.arange(n))
    assert r.damp == pytest.approx(0.1)
    _check_inverse_factor(r, 1e-4)
    assert isinstance(p.core, _core.PreparedHessian)
    with pytest.raises(AttributeError):
        p.core.damp = 1.0  # read-only
    assert "PreparedHessian(n=50" in repr(p)


def test_prepare_hessian_dead_columns_and_ties() -> None:
    H = np.diag([2.0, 0.0, 2.0, 1.0, 3.0])
    H[0, 3] = H[3, 0] = 0.5
    p = prepare_hessian(H)
    np.testing.assert_array_equal(p.dead, [False, True, False, False, False])
    assert p.dead.dtype == np.bool_
    assert p.diag[1] == 0.0
    # Normalised, dead-fixed diagonal: 1.25, 1 (dead), 1.25, 0.625, 1.875 -> 4, 0, 2, 1, 3.
    np.testing.assert_array_equal(p.perm, [4, 0, 2, 1, 3])
    Hp = p.H
    assert Hp[3, 3] == 1.0
    assert np.count_nonzero(Hp[3]) == 1
    _check_inverse_factor(p, 1e-5)


def test_prepare_hessian_damping_escalates_and_errors() -> None:
    p = prepare_hessian(np.array([[1.0, 1.05], [1.05, 1.0]]))  # eigenvalues 2.05, -0.05
    assert p.damp == pytest.approx(0.1)
    with pytest.raises(vptq.NumericalError, match="not positive definite"):
        prepare_hessian(np.array([[1.0, 20.0], [20.0, 1.0]]))
    assert issubclass(vptq.NumericalError, ValueError)
    with pytest.raises(ValueError, match="all zero"):
        prepare_hessian(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="non-negative diagonal"):
        prepare_hessian(np.diag([1.0, -1.0]))
    with pytest.raises(ValueError, match="symmetric"):
        prepare_hessian(np.array([[1.0, 0.5], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="NaN/Inf"):
        prepare_hessian(np.array([[1.0, np.nan], [np.nan, 1.0]]))
    with pytest.raises(ValueError, match="square"):
        prepare_hessian(np.ones((2, 3)))
    with pytest.raises(ValueError, match="percdamp"):
        prepare_hessian(np.eye(2), percdamp=-0.01)
    with pytest.raises(TypeError, match="percdamp: expected a float"):
        prepare_hessian(np.eye(2), percdamp="0.01")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_percdamp"):
        prepare_hessian(np.eye(2), percdamp=1.0, max_percdamp=0.5)
    with pytest.raises(TypeError, match="act_order"):
        prepare_hessian(np.eye(2), act_order=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no input rows"):
        prepare_hessian(Hessian(4))


def test_prepare_hessian_thread_count_independent() -> None:
    n = 200
    h = Hessian(n)
    h.add_batch(_activations(300, n, 6))
    prev = vptq.get_num_threads()
    try:
        vptq.set_num_threads(1)
        a = prepare_hessian(h)
        vptq.set_num_threads(2)
        b = prepare_hessian(h)
    finally:
        vptq.set_num_threads(prev)
    np.testing.assert_array_equal(a.U, b.U)


def test_proxy_loss_matches_numpy() -> None:
    rng = np.random.default_rng(7)
    M, N = 20, 30
    W = rng.standard_normal((M, N)).astype(np.float32)
    Wq = (W + 0.05 * rng.standard_normal((M, N))).astype(np.float32)
    h = Hessian(N)
    h.add_batch(_activations(80, N, 8))
    H = h.matrix
    D = W.astype(np.float64) - Wq.astype(np.float64)
    ref = float(np.trace(D @ H @ D.T))
    assert proxy_loss(W, Wq, H) == pytest.approx(ref, rel=1e-10)
    assert proxy_loss(W, Wq, h) == pytest.approx(ref, rel=1e-10)
    assert proxy_loss(W.T.copy().T, Wq[::-1][::-1], H) == pytest.approx(ref, rel=1e-10)
    assert proxy_loss(W, W, H) == 0.0
    with pytest.raises(ValueError, match=r"W_hat: expected the shape of W \(20, 30\), got \(20, 29\)"):
        proxy_loss(W, Wq[:, 1:], H)
    with pytest.raises(ValueError, match=r"H: expected shape \(30, 30\) to match W of shape \(20, 30\), got \(29, 29\)"):
        proxy_loss(W, Wq, H[1:, 1:])
    with pytest.raises(ValueError, match=r"H: Hessian has in_features=31 but W has shape \(20, 30\)"):
        proxy_loss(W, Wq, Hessian(31))


def test_core_bindings_refuse_implicit_conversions() -> None:
    acc = _core.HessianAccumulator(4)
    with pytest.raises(TypeError):
        acc.add_batch(np.ones((2, 4), np.float16))
    with pytest.raises(TypeError):
        acc.add_batch(np.ones((4, 2), np.float32).T)  # not C-contiguous
    with pytest.raises(ValueError, match=r"x: expected shape \(\*, 4\), got \(2, 3\)"):
        acc.add_batch(np.ones((2, 3), np.float32))
    with pytest.raises(TypeError):
        _core.prepare_hessian(np.eye(3, dtype=np.float32))
