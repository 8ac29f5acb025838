"""vptq.QuantizedLinear / vptq.runtime.torch.QuantizedLinear: fused GEMV vs dense dequantize-then-matmul,
SIMD levels vs scalar, thread determinism, shapes/dtypes/no-copy, bad input."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from typing import Any

import numpy as np
import pytest

import vptq
from vptq import _core
from vptq.runtime.layers import QuantizedLinear

LEVELS = [lv for lv in ("avx2", "avx512") if vptq.cpu_features().get(
    {"avx2": "avx2", "avx512": "avx512f"}[lv], False) and (lv != "avx512" or vptq.cpu_features()["avx512bw"])]


def random_vq(M: int, N: int, v: int, k1: int, k2: int = 0, opct: float = 0.0, v0: int = 0, k0: int = 0,
              G: int = 1, seed: int = 0, f16: bool = False) -> dict[str, Any]:
    """Random valid VQ weights as plain arrays (kwargs of QuantizedLinear.from_arrays)."""
    rng = np.random.default_rng(seed)
    L = _core.make_layout(M, N, v, k1, k2, opct, v0, k0, G)

    def cb(*shape: int) -> np.ndarray:
        a = rng.uniform(-1, 1, shape).astype(np.float32)
        return a.astype(np.float16).astype(np.float32) if f16 else a

    R, gs = L["num_indices"], L["group_size"]
    d: dict[str, Any] = {
        "layout": L,
        "centroids": cb(G, k1, v),
        "indices": rng.integers(0, k1, (G, R, gs)).astype(np.uint16),
        "perm": rng.permutation(N).astype(np.int64),
        "scale": rng.uniform(0.5, 1.5, N).astype(np.float32),
        "norm_bias": rng.uniform(-0.5, 0.5, N).astype(np.float32),
        "bias": rng.uniform(-0.5, 0.5, M).astype(np.float32),
    }
    if k2:
        d["res_centroids"] = cb(G, k2, v) * np.float32(0.25)
        d["res_indices"] = rng.integers(0, k2, (G, R, gs)).astype(np.uint16)
    if L["k0"]:
        d["outlier_centroids"] = cb(L["k0"], L["v0"])
        d["outlier_indices"] = rng.integers(0, L["k0"], (L["num_outlier_indices"], L["outlier_size"])).astype(
            np.uint16)
    return d


def dense(d: dict[str, Any]) -> np.ndarray:
    return _core.dequantize(d["layout"], d["centroids"], d.get("res_centroids"), d.get("outlier_centroids"),
                            d["indices"], d.get("res_indices"), d.get("outlier_indices"), d["perm"], d["scale"],
                            d["norm_bias"])


def bound(x: np.ndarray, d: dict[str, Any], W: np.ndarray) -> np.ndarray:
    """Per-output magnitude-based tolerance: 4 (n + 2) 2^-24 Σ|terms| (n = 2N terms)."""
    N = d["layout"]["N"]
    mag = np.abs(x.astype(np.float64)) @ np.abs(W.astype(np.float64)).T
    mag += np.abs(x.astype(np.float64)) @ np.abs(d["norm_bias"].astype(np.float64))[:, None]
    mag += np.abs(d["bias"])
    return 4.0 * (2 * N + 2) * 2.0**-24 * mag + 1e-30


CONFIGS = [
    # (v, k1, k2, outliers, G)
    (8, 256, 256, False, 1),
    (6, 4096, 0, False, 1),
    (12, 4096, 4096, True, 4),
    (16, 256, 256, True, 1),
    (4, 16, 0, False, 4),
    (2, 16, 16, True, 1),
    (8, 65536, 0, False, 1),
]


@pytest.mark.parametrize(("v", "k1", "k2", "outliers", "G"), CONFIGS)
def test_matches_dense_dequantize_then_matmul(v: int, k1: int, k2: int, outliers: bool, G: int) -> None:
    d = random_vq(45, 48, v, k1, k2, 10.0 if outliers else 0.0, 4 if outliers else 0, 64 if outliers else 0, G,
                  seed=v + k1, f16=k1 == 65536)
    q = QuantizedLinear.from_arrays(**d)
    W = dense(d)
    x = np.random.default_rng(1).standard_normal((5, 48)).astype(np.float32)
    ref = x.astype(np.float64) @ W.T.astype(np.float64) + d["bias"]
    y_scalar = q(x, simd_level="scalar")
    assert y_scalar.dtype == np.float32
    assert y_scalar.shape == (5, 45)
    tol = bound(x, d, W)
    assert np.all(np.abs(y_scalar - ref) <= tol)
    for level in LEVELS:
        y = q(x, simd_level=level)
        assert np.all(np.abs(y - y_scalar) <= tol / 2), level
    np.testing.assert_array_equal(q.dequantize(), W)


@pytest.mark.parametrize("batch", [1, 2, 3, 7, 8, 16, 17, 32, 33, 70])
def test_batch_sizes_agree_with_batch_one(batch: int) -> None:
    """Direct kernel (batch < 8): each row bit-identical to a batch-1 call; histogram form
    (8 <= batch < 64) and BLAS tiles (>= 64): within the stated bound with n + k terms."""
    d = random_vq(70, 40, 8, 256, 256, seed=3)
    q = QuantizedLinear.from_arrays(**d)
    x = np.random.default_rng(batch).standard_normal((batch, 40)).astype(np.float32)
    y = q(x)
    W = dense(d)
    tol = bound(x, d, W) * (2 * 40 + 512 + 2) / (2 * 40 + 2)
    for b in range(batch):
        if batch < 8:
            np.testing.assert_array_equal(y[b], q(x[b]))
        else:
            assert np.all(np.abs(y[b] - q(x[b])) <= tol[b])


def test_thread_count_bit_identical() -> None:
    d = random_vq(600, 64, 6, 4096, 0, 5.0, 4, 16, 2, seed=4)
    q = QuantizedLinear.from_arrays(**d)
    x = np.random.default_rng(2).standard_normal((4, 64)).astype(np.float32)
    old = vptq.get_num_threads()
    try:
        vptq.set_num_threads(1)
        y1 = q(x)
        vptq.set_num_threads(2)
        y2 = q(x)
    finally:
        vptq.set_num_threads(old)
    assert y1.tobytes() == y2.tobytes()


def test_shapes_dtypes_and_no_copy() -> None:
    d = random_vq(30, 24, 8, 16, seed=5)
    q = QuantizedLinear.from_arrays(**d)
    assert (q.in_features, q.out_features) == (24, 30)
    x = np.random.default_rng(0).standard_normal((2, 3, 24)).astype(np.float32)
    y = q(x)
    assert y.shape == (2, 3, 30)
    np.testing.assert_array_equal(y.reshape(6, 30), q(x.reshape(6, 24)))
    assert q(x[0, 0]).shape == (30,)
    x2, lead = q._as_batch(x)
    assert lead == (2, 3)
    assert np.shares_memory(x2, x)  # contiguous float32: no copy
    np.testing.assert_allclose(q(x.astype(np.float64)), y, rtol=0, atol=0)
    xh = x.astype(np.float16)
    np.testing.assert_array_equal(q(xh), q(xh.astype(np.float32)))
    xs = np.asfortranarray(x.reshape(6, 24))  # non-contiguous input is converted
    np.testing.assert_array_equal(q(xs), y.reshape(6, 30))


def test_bad_input() -> None:
    d = random_vq(30, 24, 8, 16, 16, seed=6)
    q = QuantizedLinear.from_arrays(**d)
    with pytest.raises(TypeError, match="numpy"):
        q([[0.0] * 24])
    with pytest.raises(TypeError, match="floating"):
        q(np.zeros((2, 24), dtype=np.int32))
    with pytest.raises(ValueError, match=r"\(\.\.\., 24\)"):
        q(np.zeros((2, 23), dtype=np.float32))
    with pytest.raises(ValueError, match="batch 0"):
        q(np.zeros((0, 24), dtype=np.float32))
    with pytest.raises(ValueError, match=r"scalar|avx"):
        q(np.zeros((1, 24), dtype=np.float32), simd_level="sse9")
    bad = dict(d)
    bad["indices"] = d["indices"].copy()
    bad["indices"][0, 1, 2] = 16  # out of range for k1 = 16
    with pytest.raises(ValueError, match="indices"):
        QuantizedLinear.from_arrays(**bad)
    bad = dict(d)
    bad["perm"] = np.zeros(24, dtype=np.int64)
    with pytest.raises(ValueError, match="perm"):
        QuantizedLinear.from_arrays(**bad)
    bad = dict(d)
    bad["bias"] = np.zeros(29, dtype=np.float32)
    with pytest.raises(ValueError, match="bias"):
        QuantizedLinear.from_arrays(**bad)
    bad = dict(d)
    bad["res_indices"] = None
    with pytest.raises(ValueError, match="res_indices"):
        QuantizedLinear.from_arrays(**bad)
    bad = dict(d)
    bad["indices"] = d["indices"][:, :-1].copy()
    with pytest.raises(ValueError, match="indices"):
        QuantizedLinear.from_arrays(**bad)
    with pytest.raises(TypeError):
        QuantizedLinear(object())


def test_nan_propagates_to_its_row() -> None:
    d = random_vq(30, 24, 8, 16, seed=7)
    q = QuantizedLinear.from_arrays(**d)
    x = np.ones((2, 24), dtype=np.float32)
    x[1, 3] = np.nan
    y = q(x)
    assert np.all(np.isfinite(y[0]))
    assert np.all(np.isnan(y[1]))


def test_concurrent_calls_from_threads() -> None:
    d = random_vq(200, 64, 8, 256, 256, seed=8)
    q = QuantizedLinear.from_arrays(**d)
    x = np.random.default_rng(3).standard_normal((4, 64)).astype(np.float32)
    ref = q(x)
    out: list[np.ndarray] = []

    def work() -> None:
        for _ in range(5):
            out.append(q(x))

    ts = [threading.Thread(target=work) for _ in range(3)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert len(out) == 15
    for y in out:
        np.testing.assert_array_equal(y, ref)


def test_from_quantized_weight_and_state_dict() -> None:
    from vptq.quant.quantize import QuantizedWeight

    d = random_vq(40, 32, 8, 256, 256, 10.0, 4, 16, 1, seed=9, f16=True)
    qw = QuantizedWeight(d["layout"], d["centroids"], d["indices"], res_centroids=d["res_centroids"],
                         res_indices=d["res_indices"], outlier_centroids=d["outlier_centroids"],
                         outlier_indices=d["outlier_indices"], perm=d["perm"], scale=d["scale"],
                         bias=d["norm_bias"])
    q = QuantizedLinear(qw, d["bias"])
    x = np.random.default_rng(4).standard_normal((3, 32)).astype(np.float32)
    W = qw.dequantize()
    np.testing.assert_allclose(q(x), x @ W.T + d["bias"], rtol=1e-4, atol=1e-4)
    tensors = qw.state_dict("float16")
    tensors["bias"] = d["bias"].astype(np.float16)
    q2 = QuantizedLinear.from_state_dict(tensors, qw.layer_config(bias=True))
    W2 = q2.dequantize()  # codebooks/scale/bias went through float16
    np.testing.assert_allclose(W2, W, rtol=0, atol=2e-2)
    np.testing.assert_allclose(q2(x), x @ W2.T + d["bias"].astype(np.float16).astype(np.float32), rtol=1e-4,
                               atol=1e-4)
    cfg = qw.layer_config(bias=True)
    del tensors["bias"]
    with pytest.raises(ValueError, match="bias"):
        QuantizedLinear.from_state_dict(tensors, cfg)


def test_cpu_features_reports_levels() -> None:
    f = vptq.cpu_features()
    assert f["selected"] in ("scalar", "avx2", "avx512", "neon")
    assert f["detected"] in ("scalar", "avx2", "avx512", "neon")
    # The x86 kernels are built with BMI2 (rorx for index fields): a level that uses them
    # must only be detected where the CPU has every feature its translation unit assumes.
    needs = {"avx2": ("avx2", "fma", "f16c", "bmi2"),
             "avx512": ("avx512f", "avx512bw", "avx512vl", "avx512dq", "fma", "f16c", "bmi2")}
    for flag in needs.get(str(f["detected"]), ()):
        assert f[flag] is True, flag


def test_torch_module_imports_without_torch() -> None:
    code = ("import sys; sys.modules['torch'] = None\n"
            "import vptq.runtime.torch as vt\n"
            "try:\n    vt.QuantizedLinear\nexcept ImportError as e:\n    print('ImportError', e)\n")
    env = dict(os.environ)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False)
    assert r.returncode == 0, r.stderr
    assert "ImportError" in r.stdout


def test_torch_quantized_linear() -> None:
    torch = pytest.importorskip("torch")
    import vptq.runtime.torch as vt

    d = random_vq(50, 32, 8, 256, 0, seed=10)
    inner = QuantizedLinear.from_arrays(**d)
    m = vt.QuantizedLinear(inner)
    assert isinstance(m, torch.nn.Module)
    assert (m.in_features, m.out_features) == (32, 50)
    x = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(0))
    y = m(x)
    assert y.dtype == torch.float32
    assert y.shape == (2, 5, 50)
    np.testing.assert_array_equal(y.numpy(), inner(x.numpy()))
    for dt in (torch.bfloat16, torch.float16):
        yd = m(x.to(dt))
        assert yd.dtype == dt
        np.testing.assert_array_equal(yd.float().numpy(), torch.from_numpy(inner(x.to(dt).float().numpy())).to(dt).float().numpy())
    with pytest.raises(TypeError):
        m(torch.zeros(2, 32, dtype=torch.int32))
    with pytest.raises(ValueError, match="32"):
        m(torch.zeros(2, 31))
    assert "in_features=32" in repr(m)


def test_torch_quantized_linear_fast_path_edges() -> None:
    """The float32 fast path and the general path give the same results; inputs the fast path
    must not take (non-contiguous, requiring grad, 1-D, empty) behave as documented."""
    torch = pytest.importorskip("torch")
    import vptq.runtime.torch as vt

    inner = QuantizedLinear.from_arrays(**random_vq(50, 32, 8, 256, 16, seed=12))
    m = vt.QuantizedLinear(inner)
    x = torch.randn(32, 6, generator=torch.Generator().manual_seed(2))
    xt = x.t()  # (6, 32), not contiguous
    assert not xt.is_contiguous()
    np.testing.assert_array_equal(m(xt).numpy(), inner(np.ascontiguousarray(xt.numpy())))
    xg = xt.contiguous().requires_grad_(True)
    np.testing.assert_array_equal(m(xg).detach().numpy(), m(xt.contiguous()).numpy())
    v1 = m(xt[0].contiguous())
    assert v1.shape == (50,)
    np.testing.assert_array_equal(v1.numpy(), m(xt[:1].contiguous())[0].numpy())
    with pytest.raises(ValueError, match="batch 0"):
        m(torch.zeros(0, 32))


def test_torch_from_linear_matches_dense() -> None:
    torch = pytest.importorskip("torch")
    import vptq.runtime.torch as vt
    from vptq.quant.quantize import QuantizedWeight

    d = random_vq(24, 40, 8, 16, 16, seed=11)
    qw = QuantizedWeight(d["layout"], d["centroids"], d["indices"], res_centroids=d["res_centroids"],
                         res_indices=d["res_indices"], perm=d["perm"], scale=d["scale"], bias=d["norm_bias"])
    lin = torch.nn.Linear(40, 24)
    m = vt.QuantizedLinear.from_linear(lin, qw)
    x = torch.randn(3, 40, generator=torch.Generator().manual_seed(1))
    ref = x.double() @ torch.from_numpy(qw.dequantize()).double().T + lin.bias.detach().double()
    torch.testing.assert_close(m(x).double(), ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="shape"):
        vt.QuantizedLinear.from_linear(torch.nn.Linear(41, 24), qw)


def test_sorted_layout_for_large_codebooks() -> None:
    # A 65536-entry fp16 codebook (1 MB) runs in the sorted, codebook-chunked layout by
    # default; the same weights with sorted_layout=False take the direct layout. Both
    # agree with the dense product, rows of a batch equal batch-1 calls exactly, and the
    # sorted form stores 4 bytes per index instead of 2.
    d = random_vq(520, 300, 8, 65536, 0, 0.0, 0, 0, 1, seed=5, f16=True)
    q = QuantizedLinear.from_arrays(**d)
    assert q.sorted_sections == 1
    args = (d["layout"], d["centroids"], None, None, d["indices"], None, None, d["perm"], d["scale"],
            d["norm_bias"], d["bias"])
    direct = _core.GemvPlan(*args, sorted_layout=False)
    assert direct.sorted_sections == 0
    n_idx = d["indices"].size
    assert q.kernel_bytes - direct.kernel_bytes >= 2 * n_idx  # 4 instead of 2 bytes per index
    W = dense(d)
    x = np.random.default_rng(2).standard_normal((5, 300)).astype(np.float32)
    ref = x.astype(np.float64) @ W.T.astype(np.float64) + d["bias"]
    tol = bound(x, d, W)
    for level in ["scalar", *LEVELS]:
        y = q(x, simd_level=level)
        assert np.all(np.abs(y - ref) <= tol), level
        assert np.all(np.abs(y - direct.forward(x, level)) <= tol), level
        for b in range(5):
            np.testing.assert_array_equal(q(x[b], simd_level=level), y[b])
    np.testing.assert_array_equal(q.dequantize(), W)
