"""quantize_weight / QuantizedWeight / QuantConfig: quality, format round trips, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

import vptq
from vptq import QuantConfig, QuantizedWeight, quantize_weight


def correlated_layer(M: int, N: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((N, N)) / np.sqrt(N)
    X = rng.standard_normal((8 * N, N)) @ (np.eye(N) + A)
    X[:, ::11] *= 6.0
    H = X.T @ X / len(X)
    W = (0.02 * rng.standard_t(4, (M, N)) * (0.5 + rng.random(N))).astype(np.float32)
    return W, H


SMALL = QuantConfig(vector_len=4, num_centroids=16, kmeans_iters=20, block_size=16)


@pytest.fixture(scope="module")
def layer() -> tuple[np.ndarray, np.ndarray]:
    return correlated_layer(64, 96)


def test_vptq_beats_plain_vq_and_gptq_beats_rtn_order(layer: tuple[np.ndarray, np.ndarray]) -> None:
    W, H = layer
    plain = quantize_weight(W, H, SMALL.replace(error_feedback=False))
    ref = quantize_weight(W, H, SMALL.replace(norm_aware_hessian=False))
    ours = quantize_weight(W, H, SMALL)
    assert ours.proxy_loss < 0.8 * plain.proxy_loss
    assert ours.proxy_loss < ref.proxy_loss
    # proxy_loss is measured against the given H on the stored (fp16-rounded) weight
    What = ours.dequantize()
    assert math.isclose(ours.proxy_loss, vptq.proxy_loss(W, What, H), rel_tol=1e-9)
    base = vptq.proxy_loss(W, np.zeros_like(W), H)
    assert math.isclose(ours.relative_proxy_loss, ours.proxy_loss / base, rel_tol=1e-9)


def test_residual_codebook_reduces_loss(layer: tuple[np.ndarray, np.ndarray]) -> None:
    W, H = layer
    one = quantize_weight(W, H, SMALL)
    two = quantize_weight(W, H, SMALL.replace(num_res_centroids=16))
    assert two.proxy_loss < 0.7 * one.proxy_loss
    assert two.res_indices is not None
    assert two.res_centroids is not None


def test_deterministic_for_seed_and_threads(layer: tuple[np.ndarray, np.ndarray]) -> None:
    W, H = layer
    cfg = SMALL.replace(num_res_centroids=8)
    old = vptq.get_num_threads()
    try:
        vptq.set_num_threads(1)
        a = quantize_weight(W, H, cfg)
        vptq.set_num_threads(2)
        b = quantize_weight(W, H, cfg)
    finally:
        vptq.set_num_threads(old)
    for k, v in a.state_dict().items():
        np.testing.assert_array_equal(v, b.state_dict()[k], err_msg=k)
    c = quantize_weight(W, H, cfg.replace(seed=1))
    assert not np.array_equal(a.centroids, c.centroids)


def test_state_dict_matches_official_layout(layer: tuple[np.ndarray, np.ndarray]) -> None:
    W, H = layer
    W = W[:62]  # M not a multiple of v
    cfg = QuantConfig(vector_len=4, num_centroids=16, num_res_centroids=8, outlier_percent=3.0,
                      outlier_vector_len=2, outlier_centroids=8, group_num=2, kmeans_iters=5)
    q = quantize_weight(W, H, cfg)
    sd = q.state_dict()
    # 96 columns: ceil(2.88) = 3 outliers (+1 so that 93 -> 92 splits in 2 groups of 46)
    assert q.layout["outlier_size"] == 4
    assert q.layout["group_size"] == 46
    assert set(sd) == {"centroids.weight", "res_centroids.weight", "outlier_centroids.weight", "indices",
                       "outlier_indices", "perm", "weight_scale", "weight_bias"}
    assert sd["centroids.weight"].shape == (2, 16 * 4)
    assert sd["centroids.weight"].dtype == np.float16
    assert sd["res_centroids.weight"].shape == (2, 8 * 4)
    assert sd["outlier_centroids.weight"].shape == (1, 8 * 2)
    # 46 codes of 4 + 3 bits = 322 bits -> 11 int32 words per row; ceil(62 / 4) = 16 rows
    assert sd["indices"].shape == (2, 16, 11)
    assert sd["indices"].dtype == np.int32
    assert sd["outlier_indices"].shape == (1, 31, 4)
    assert sd["outlier_indices"].dtype == np.int16
    assert sd["perm"].shape == (96,)
    assert sd["perm"].dtype == np.int16
    assert sd["weight_scale"].shape == (96,)
    assert sd["weight_scale"].dtype == np.float16
    # bit layout: first code of row (0, 0) sits in the low bits, residual above the 4 main bits
    word0 = int(sd["indices"].view(np.uint32)[0, 0, 0])
    assert word0 & 0x7F == int(q.indices[0, 0, 0]) | (int(q.res_indices[0, 0, 0]) << 4)
    cfgd = q.layer_config(bias=True)
    assert cfgd == {
        "in_features": 96, "out_features": 62, "vector_lens": [2, 4], "num_centroids": [8, 16],
        "num_res_centroids": [-1, 8], "group_num": 2, "group_size": 46, "outlier_size": 4,
        "indices_as_float": False, "enable_norm": True, "enable_perm": True, "bias": True, "is_indice_packed": True,
    }
    back = QuantizedWeight.from_state_dict(sd, cfgd)
    np.testing.assert_array_equal(back.dequantize(), q.dequantize())
    assert back.bits_per_weight == pytest.approx(q.bits_per_weight)


def test_dequantize_matches_numpy_reconstruction(layer: tuple[np.ndarray, np.ndarray]) -> None:
    W, H = layer
    q = quantize_weight(W, H, SMALL.replace(num_res_centroids=4))
    v = 4
    _G, R, _gs = q.indices.shape
    Q = np.zeros((R * v, q.in_features), dtype=np.float32)
    for p in range(q.in_features):
        Q[:, p] = (q.centroids[0][q.indices[0, :, p]] + q.res_centroids[0][q.res_indices[0, :, p]]).reshape(-1)
    What = np.empty_like(W)
    What[:, q.perm] = Q[: W.shape[0]]
    What = What * q.scale + q.bias
    np.testing.assert_allclose(q.dequantize(), What, rtol=1e-6, atol=1e-7)


def test_bits_per_weight_counts_everything(layer: tuple[np.ndarray, np.ndarray]) -> None:
    W, H = layer
    q = quantize_weight(W, H, SMALL.replace(num_res_centroids=8))
    M, N = W.shape
    idx_bits = 16 * math.ceil(96 * 7 / 32) * 32  # 16 row blocks x 21 words
    expected = idx_bits + 16 * (16 * 4 + 8 * 4) + 2 * 16 * N + 16 * N
    assert q.bits_per_weight == pytest.approx(expected / (M * N))
    assert q.index_bits_per_weight == pytest.approx(idx_bits / (M * N))


def test_noncontiguous_and_float64_input_give_same_result(layer: tuple[np.ndarray, np.ndarray]) -> None:
    W, H = layer
    a = quantize_weight(W, H, SMALL)
    Wf = np.asfortranarray(W.astype(np.float64))
    b = quantize_weight(Wf, H, SMALL)
    np.testing.assert_array_equal(a.indices, b.indices)
    Wneg = W[::-1][::-1]
    c = quantize_weight(Wneg, H, SMALL)
    np.testing.assert_array_equal(a.indices, c.indices)


def test_accepts_hessian_object_and_torch(layer: tuple[np.ndarray, np.ndarray]) -> None:
    W, _ = layer
    rng = np.random.default_rng(3)
    x = rng.standard_normal((500, W.shape[1])).astype(np.float32)
    h = vptq.Hessian(W.shape[1])
    h.add_batch(x)
    a = quantize_weight(W, h, SMALL)
    b = quantize_weight(W, h.matrix, SMALL)
    np.testing.assert_array_equal(a.indices, b.indices)
    torch = pytest.importorskip("torch")
    c = quantize_weight(torch.from_numpy(W), torch.from_numpy(h.matrix), SMALL)
    np.testing.assert_array_equal(a.indices, c.indices)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"vector_len": 1, "num_centroids": 16}, ValueError, "vector_len"),
        ({"vector_len": 17, "num_centroids": 16}, ValueError, "vector_len"),
        ({"vector_len": 4, "num_centroids": 300}, ValueError, "power of two"),
        ({"vector_len": 4, "num_centroids": 131072}, ValueError, "power of two"),
        ({"vector_len": 4, "num_centroids": 16, "num_res_centroids": 3}, ValueError, "num_res_centroids"),
        ({"vector_len": 4, "num_centroids": 16, "outlier_percent": 1.0}, ValueError, "outlier_centroids"),
        ({"vector_len": 4, "num_centroids": 16, "outlier_percent": 100.0}, ValueError, "outlier_percent"),
        ({"vector_len": 4, "num_centroids": 16, "group_num": 0}, ValueError, "group_num"),
        ({"vector_len": 4.0, "num_centroids": 16}, TypeError, "vector_len"),
        ({"vector_len": 4, "num_centroids": 16, "enable_norm": 1}, TypeError, "enable_norm"),
        ({"vector_len": 4, "num_centroids": 16, "percdamp": float("nan")}, ValueError, "percdamp"),
    ],
)
def test_config_validation(kwargs: dict, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        QuantConfig(**kwargs)


def test_presets() -> None:
    c = QuantConfig.preset("v8-k65536-256-woft")
    assert (c.vector_len, c.num_centroids, c.num_res_centroids) == (8, 65536, 256)
    assert c.index_bits == pytest.approx(3.0)
    assert QuantConfig.preset("v12-k4096-4096").index_bits == pytest.approx(2.0)
    assert QuantConfig.preset("v8-k256-256", seed=5).seed == 5
    for name in vptq.PRESETS:
        assert isinstance(QuantConfig.preset(name), QuantConfig)
    with pytest.raises(ValueError, match="unknown preset"):
        QuantConfig.preset("v8-k-1")
    with pytest.raises(TypeError, match="unknown fields"):
        QuantConfig.preset("v8-k256-256", colour=1)


def test_bad_inputs_raise_clear_errors(layer: tuple[np.ndarray, np.ndarray]) -> None:
    W, H = layer
    with pytest.raises(TypeError, match="W"):
        quantize_weight(W.astype(np.int32), H, SMALL)
    with pytest.raises(TypeError):
        quantize_weight("weights", H, SMALL)
    with pytest.raises(ValueError, match="W"):
        quantize_weight(W[0], H, SMALL)
    with pytest.raises(ValueError, match="96"):
        quantize_weight(W[:, :90], H, SMALL)
    with pytest.raises(ValueError, match="W"):
        quantize_weight(np.zeros((0, 96), np.float32), H, SMALL)
    bad = W.copy()
    bad[3, 4] = np.nan
    with pytest.raises(ValueError, match="finite"):
        quantize_weight(bad, H, SMALL)
    Hbad = H.copy()
    Hbad[0, 0] = np.inf
    with pytest.raises(ValueError, match="finite"):
        quantize_weight(W, Hbad, SMALL)
    with pytest.raises(ValueError, match="exceeds the number of vectors"):
        quantize_weight(W[:8, :8], H[:8, :8], SMALL.replace(num_centroids=32))
    with pytest.raises(TypeError, match="config"):
        quantize_weight(W, H, 42)
    with pytest.raises(ValueError, match="non-negative diagonal"):
        quantize_weight(W, -np.eye(96), SMALL)
    # Positive diagonal (0.1) but an eigenvalue of -94.9: no damping within the bound helps.
    Hind = 1.1 * np.eye(96) - np.ones((96, 96))
    with pytest.raises(vptq.NumericalError, match="positive definite"):
        quantize_weight(W, Hind, SMALL)


def test_from_state_dict_rejects_corrupt_input(layer: tuple[np.ndarray, np.ndarray]) -> None:
    W, H = layer
    q = quantize_weight(W, H, SMALL.replace(num_res_centroids=8))
    sd, cfg = q.state_dict(), q.layer_config()
    with pytest.raises(ValueError, match="missing tensors"):
        QuantizedWeight.from_state_dict({k: v for k, v in sd.items() if k != "perm"}, cfg)
    with pytest.raises(ValueError, match="shape"):
        QuantizedWeight.from_state_dict({**sd, "indices": sd["indices"][:, :-1]}, cfg)
    with pytest.raises(TypeError, match="dtype"):
        QuantizedWeight.from_state_dict({**sd, "indices": sd["indices"].astype(np.float32)}, cfg)
    with pytest.raises(TypeError, match="float"):
        QuantizedWeight.from_state_dict({**sd, "centroids.weight": sd["centroids.weight"].astype(np.int16)}, cfg)
    with pytest.raises(TypeError, match=r"state dict entry 'indices': expected a numpy array or a torch tensor"):
        QuantizedWeight.from_state_dict({**sd, "indices": sd["indices"].tolist()}, cfg)
    with pytest.raises(TypeError, match=r"state dict entry 'perm': expected a numpy array or a torch tensor"):
        QuantizedWeight.from_state_dict({**sd, "perm": sd["perm"].tolist()}, cfg)
    perm = sd["perm"].copy()
    perm[0] = perm[1]
    with pytest.raises(ValueError, match="perm"):
        QuantizedWeight.from_state_dict({**sd, "perm": perm}, cfg)
    with pytest.raises(ValueError, match="missing keys"):
        QuantizedWeight.from_state_dict(sd, {k: v for k, v in cfg.items() if k != "group_size"})
    with pytest.raises(ValueError, match="group_size"):
        QuantizedWeight.from_state_dict(sd, {**cfg, "group_size": 95})
    # out-of-range outlier index (outlier indices are stored unpacked as int16)
    qo = quantize_weight(W, H, SMALL.replace(outlier_percent=5.0, outlier_vector_len=2, outlier_centroids=8))
    sdo = qo.state_dict()
    oi = sdo["outlier_indices"].copy()
    oi[0, 0, 0] = 8
    with pytest.raises(ValueError, match="outlier"):
        QuantizedWeight.from_state_dict({**sdo, "outlier_indices": oi}, qo.layer_config())
