"""Packed VPTQ format through the extension: layout, index bitstream, dequantization (design note §3)."""

from __future__ import annotations

import numpy as np
import pytest

from vptq import _core


def _naive_pack(idx: np.ndarray, ridx: np.ndarray | None, b1: int, b2: int) -> np.ndarray:
    """Bit-by-bit packer of §3.3: bit t of code c goes to stream bit c*T + t (LSB-first)."""
    t_bits = b1 + b2
    rows = idx.reshape(-1, idx.shape[-1]).astype(np.uint64)
    res = np.zeros_like(rows) if ridx is None else ridx.reshape(rows.shape).astype(np.uint64)
    codes = (res << np.uint64(b1)) | rows
    cols = rows.shape[1]
    words = (cols * t_bits + 31) // 32
    bits = (codes[:, :, None] >> np.arange(t_bits, dtype=np.uint64)) & np.uint64(1)
    stream = np.zeros((rows.shape[0], words * 32), dtype=np.uint64)
    stream[:, : cols * t_bits] = bits.reshape(rows.shape[0], -1)
    weights = np.uint64(1) << np.arange(32, dtype=np.uint64)
    packed = (stream.reshape(rows.shape[0], words, 32) * weights).sum(axis=-1).astype(np.uint32)
    return packed.reshape(*idx.shape[:-1], words)


def _naive_dequant(layout: dict, w: dict) -> np.ndarray:
    """§3.4 written out with numpy, independent of the C++ loop structure."""
    m, n, v, v0 = layout["M"], layout["N"], layout["v"], layout["v0"]
    os_, gs = layout["outlier_size"], layout["group_size"]
    q = np.zeros((m, n), dtype=np.float32)
    rows = np.arange(m)
    for p in range(n):
        if p < os_:
            q[:, p] = w["outlier_centroids"][w["outlier_indices"][rows // v0, p], rows % v0]
        else:
            g, c = divmod(p - os_, gs)
            col = w["centroids"][g][w["indices"][g, rows // v, c], rows % v]
            if w.get("res_centroids") is not None:
                col = col + w["res_centroids"][g][w["res_indices"][g, rows // v, c], rows % v]
            q[:, p] = col
    out = np.empty_like(q)
    perm = w.get("perm")
    out[:, np.arange(n) if perm is None else perm] = q
    if w.get("scale") is not None:
        out = out * w["scale"][None, :]
    if w.get("bias") is not None:
        out = out + w["bias"][None, :]
    return out


def _random_weights(layout: dict, rng: np.random.Generator) -> dict:
    g, r, gs = layout["group_num"], layout["num_indices"], layout["group_size"]
    w: dict = {
        "centroids": rng.standard_normal((g, layout["k1"], layout["v"])).astype(np.float32),
        "res_centroids": None,
        "outlier_centroids": None,
        "indices": rng.integers(0, layout["k1"], (g, r, gs)).astype(np.uint16),
        "res_indices": None,
        "outlier_indices": None,
        "perm": rng.permutation(layout["N"]).astype(np.int64),
        "scale": rng.uniform(0.5, 2.0, layout["N"]).astype(np.float32),
        "bias": rng.standard_normal(layout["N"]).astype(np.float32),
    }
    if layout["k2"] > 0:
        w["res_centroids"] = rng.standard_normal((g, layout["k2"], layout["v"])).astype(np.float32)
        w["res_indices"] = rng.integers(0, layout["k2"], (g, r, gs)).astype(np.uint16)
    if layout["k0"] > 0:
        w["outlier_centroids"] = rng.standard_normal((layout["k0"], layout["v0"])).astype(np.float32)
        w["outlier_indices"] = rng.integers(
            0, layout["k0"], (layout["num_outlier_indices"], layout["outlier_size"])
        ).astype(np.uint16)
    return w


def _dequant(layout: dict, w: dict) -> np.ndarray:
    return _core.dequantize(
        layout,
        w["centroids"],
        w["res_centroids"],
        w["outlier_centroids"],
        w["indices"],
        w["res_indices"],
        w["outlier_indices"],
        w["perm"],
        w["scale"],
        w["bias"],
    )


# ---------------------------------------------------------------- layout


def test_layout_outliers_absorb_remainder() -> None:
    lay = _core.make_layout(30, 1000, 6, 4096, 0, 1.0, 4, 1024, 4)
    assert lay["outlier_size"] == 12  # ceil(10) + (990 % 4)
    assert lay["group_size"] == 247
    assert lay["num_indices"] == 5
    assert lay["num_outlier_indices"] == 8
    assert lay["index_bits"] == 12
    assert lay["res_index_bits"] == 0
    assert lay["outlier_index_bits"] == 10
    assert lay["packed_words"] == (247 * 12 + 31) // 32


def test_layout_defaults_and_round_trip() -> None:
    lay = _core.make_layout(100, 64, 8, 256)
    assert (lay["k2"], lay["k0"], lay["v0"], lay["group_num"], lay["outlier_size"]) == (0, 0, 0, 1, 0)
    assert _core.check_layout(lay) == lay
    bad = dict(lay, group_size=63)
    with pytest.raises(ValueError, match="outlier_size \\+ group_num \\* group_size"):
        _core.check_layout(bad)
    with pytest.raises(ValueError, match="missing key 'k1'"):
        _core.check_layout({k: x for k, x in lay.items() if k != "k1"})
    with pytest.raises(TypeError, match="expected an int"):
        _core.check_layout(dict(lay, M=100.0))
    assert _core.check_layout(dict(lay, M=np.int64(100)))["M"] == 100


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((8, 64, 8, 300), "num_centroids k1 must be a power of two in \\[2, 65536\\], got 300"),
        ((8, 64, 1, 256), "v \\(vector length\\) must be in \\[2, 16\\], got 1"),
        ((8, 64, 8, 256, 3), "k2"),
        ((8, 66, 8, 256, 0, 0.0, 0, 0, 4), "divisible by group_num"),
        ((8, 64, 8, 256, 0, 1.0, 0, 0, 1), "requires an outlier codebook"),
        ((8, 64, 8, 256, 0, 1.0, 4, 100, 1), "k0"),
        ((8, 70000, 8, 256), "65536"),
    ],
)
def test_layout_rejects_bad_config(args: tuple, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _core.make_layout(*args)


# ---------------------------------------------------------------- packing


def test_worked_example_b16() -> None:
    packed = _core.pack_indices(np.array([0x1234, 0xABCD], dtype=np.uint16), None, 16, 0)
    assert packed.dtype == np.uint32
    assert packed.tolist() == [0xABCD1234]


def test_worked_example_b16_res8() -> None:
    idx = np.array([0x1234, 0xABCD], dtype=np.uint16)
    res = np.array([0x56, 0x78], dtype=np.uint16)
    packed = _core.pack_indices(idx, res, 16, 8)
    assert packed.tolist() == [0xCD561234, 0x78AB]
    lay = _core.make_layout(8, 4096, 8, 65536, 256)
    assert lay["packed_words"] == 3072
    back_idx, back_res = _core.unpack_indices(packed, 2, 16, 8)
    np.testing.assert_array_equal(back_idx, idx)
    np.testing.assert_array_equal(back_res, res)


@pytest.mark.parametrize(
    ("b1", "b2"), [(1, 0), (3, 2), (8, 8), (12, 12), (13, 7), (16, 0), (16, 16), (5, 16)]
)
def test_round_trip_nd_matches_naive(b1: int, b2: int) -> None:
    rng = np.random.default_rng(b1 * 100 + b2)
    shape = (2, 3, 45)
    idx = rng.integers(0, 2**b1, shape).astype(np.uint16)
    res = rng.integers(0, 2**b2, shape).astype(np.uint16) if b2 else None
    packed = _core.pack_indices(idx, res, b1, b2)
    assert packed.shape == (2, 3, (45 * (b1 + b2) + 31) // 32)
    np.testing.assert_array_equal(packed, _naive_pack(idx, res, b1, b2))
    back_idx, back_res = _core.unpack_indices(packed, 45, b1, b2)
    np.testing.assert_array_equal(back_idx, idx)
    if b2:
        np.testing.assert_array_equal(back_res, res)
    else:
        assert back_res is None


def test_pack_errors() -> None:
    idx = np.array([[1, 2, 9]], dtype=np.uint16)
    with pytest.raises(ValueError, match="index 9 at row 0, column 2 does not fit in b1 = 3 bits"):
        _core.pack_indices(idx, None, 3, 0)
    with pytest.raises(ValueError, match="ridx: expected an array"):
        _core.pack_indices(idx, None, 4, 2)
    with pytest.raises(ValueError, match="ridx: expected shape"):
        _core.pack_indices(idx, np.zeros((1, 2), dtype=np.uint16), 4, 2)
    with pytest.raises(ValueError, match="b1"):
        _core.pack_indices(idx, None, 17, 0)
    with pytest.raises(TypeError):
        _core.pack_indices(idx.astype(np.float64), None, 4, 0)
    with pytest.raises(TypeError):
        _core.pack_indices(np.zeros((4, 6), dtype=np.uint16)[:, ::2], None, 4, 0)  # not C-contiguous


def test_unpack_errors() -> None:
    packed = np.zeros((2, 3), dtype=np.uint32)
    with pytest.raises(ValueError, match=r"expected last dimension .* = 2 .* got 3"):
        _core.unpack_indices(packed, 4, 16, 0)
    with pytest.raises(TypeError):
        _core.unpack_indices(packed.view(np.int32), 6, 16, 0)
    with pytest.raises(ValueError, match="b2"):
        _core.unpack_indices(packed, 3, 16, 17)


# ---------------------------------------------------------------- dequantize


@pytest.mark.parametrize(
    "cfg",
    [
        (23, 150, 6, 16, 8, 5.0, 4, 32, 3),  # outliers + residual + groups, M % v, M % v0 != 0
        (13, 130, 8, 64, 0, 0.0, 0, 0, 1),
        (9, 64, 2, 4, 4, 0.0, 0, 0, 4),
    ],
)
def test_dequantize_matches_formula(cfg: tuple) -> None:
    lay = _core.make_layout(*cfg)
    w = _random_weights(lay, np.random.default_rng(0))
    out = _dequant(lay, w)
    assert out.shape == (lay["M"], lay["N"])
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, _naive_dequant(lay, w))
    for key in ("perm", "scale", "bias"):
        w2 = dict(w, **{key: None})
        np.testing.assert_array_equal(_dequant(lay, w2), _naive_dequant(lay, w2))


def test_dequantize_rejects_corrupt_weights() -> None:
    lay = _core.make_layout(10, 40, 4, 16, 4, 10.0, 2, 8, 2)
    w = _random_weights(lay, np.random.default_rng(1))
    _dequant(lay, w)

    bad = dict(w, indices=w["indices"].copy())
    bad["indices"][1, 2, 3] = 16
    with pytest.raises(ValueError, match="indices: expected every index < k1 = 16, got 16"):
        _dequant(lay, bad)
    bad = dict(w, outlier_indices=w["outlier_indices"].copy())
    bad["outlier_indices"][0, 0] = 60000
    with pytest.raises(ValueError, match="outlier_indices"):
        _dequant(lay, bad)
    bad = dict(w, perm=w["perm"].copy())
    bad["perm"][0] = bad["perm"][1]
    with pytest.raises(ValueError, match="perm: expected a permutation"):
        _dequant(lay, bad)
    bad = dict(w, scale=w["scale"].copy())
    bad["scale"][3] = np.inf
    with pytest.raises(ValueError, match="scale"):
        _dequant(lay, bad)


def test_dequantize_shape_and_presence_errors() -> None:
    lay = _core.make_layout(10, 40, 4, 16, 4, 10.0, 2, 8, 2)
    w = _random_weights(lay, np.random.default_rng(2))
    with pytest.raises(ValueError, match="centroids: expected shape \\(2, 16, 4\\), got \\(2, 16, 5\\)"):
        _dequant(lay, dict(w, centroids=np.zeros((2, 16, 5), dtype=np.float32)))
    with pytest.raises(ValueError, match="res_centroids: expected an array because k2 > 0"):
        _dequant(lay, dict(w, res_centroids=None))
    with pytest.raises(ValueError, match="outlier_indices: expected an array"):
        _dequant(lay, dict(w, outlier_indices=None))
    with pytest.raises(ValueError, match="perm: expected shape \\(40,\\)"):
        _dequant(lay, dict(w, perm=np.arange(39, dtype=np.int64)))
    lay0 = _core.make_layout(10, 40, 4, 16)
    w0 = _random_weights(lay0, np.random.default_rng(3))
    with pytest.raises(ValueError, match="res_centroids: expected None"):
        _dequant(lay0, dict(w0, res_centroids=w["res_centroids"]))
    with pytest.raises(TypeError):
        _dequant(lay0, dict(w0, perm=w0["perm"].astype(np.int32)))
    with pytest.raises(TypeError):
        _dequant(lay0, dict(w0, centroids=w0["centroids"].astype(np.float64)))


def test_check_weights_binding() -> None:
    lay = _core.make_layout(8, 16, 4, 4)
    w = _random_weights(lay, np.random.default_rng(4))
    _core.check_weights(lay, w["centroids"], None, None, w["indices"], perm=w["perm"])
    with pytest.raises(ValueError, match="perm"):
        _core.check_weights(lay, w["centroids"], None, None, w["indices"], perm=np.zeros(16, dtype=np.int64))
