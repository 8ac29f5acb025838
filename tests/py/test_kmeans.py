"""vptq.kmeans: weighted k-means and nearest-centroid search through the C++ core."""

from __future__ import annotations

import numpy as np
import pytest

import vptq
from vptq import _core
from vptq.quant.kmeans import KMeansResult, kmeans, nearest_centroid


def _realistic(n: int, d: int, seed: int) -> np.ndarray:
    """Heavy-tailed, correlated rows cut into d-vectors."""
    rng = np.random.default_rng(seed)
    noise = rng.standard_t(4.0, size=(n, d))
    out = np.empty((n, d))
    prev = np.zeros(n)
    for j in range(d):
        prev = 0.6 * prev + noise[:, j]
        out[:, j] = prev
    out *= rng.uniform(0.5, 2.0, size=(n, 1))
    return out.astype(np.float32)


def _brute_force(x: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact squared distances in float64 (exact for small-integer data); first index on ties."""
    idx = np.empty(len(x), dtype=np.int32)
    best = np.empty(len(x))
    for i in range(0, len(x), 128):  # row blocks keep the [rows, k, d] temporary small
        d2 = ((x[i : i + 128, None, :].astype(np.float64) - c[None, :, :].astype(np.float64)) ** 2).sum(axis=2)
        idx[i : i + 128] = d2.argmin(axis=1)
        best[i : i + 128] = d2.min(axis=1)
    return idx, best


@pytest.fixture(params=["scalar", "avx2", "avx512"])
def simd_level(request: pytest.FixtureRequest):
    """Runs the test at each SIMD level this CPU supports (skips the others)."""
    saved = vptq.simd_level()
    try:
        vptq.set_simd_level(request.param)
    except ValueError:
        pytest.skip(f"SIMD level {request.param} not supported on this CPU")
    yield request.param
    vptq.set_simd_level(saved)


@pytest.fixture
def restore_threads():
    saved = vptq.get_num_threads()
    yield
    vptq.set_num_threads(saved)


def test_result_shapes_dtypes_and_consistency() -> None:
    x = _realistic(3000, 8, 0)
    w = np.random.default_rng(1).uniform(0.0, 2.0, size=3000)
    r = kmeans(x, 50, w, max_iter=20, seed=3)
    assert isinstance(r, KMeansResult)
    assert r.centroids.shape == (50, 8)
    assert r.centroids.dtype == np.float32
    assert r.assignment.shape == (3000,)
    assert r.assignment.dtype == np.int32
    assert 1 <= r.iterations <= 20
    assert len(r.inertia_history) == r.iterations + 1
    assert r.inertia == r.inertia_history[-1]
    hist = np.array(r.inertia_history)
    assert (np.diff(hist) <= 1e-6 * hist[:-1]).all()
    # The assignment belongs to the returned centroids, and the inertia to both.
    idx, dist = nearest_centroid(x, r.centroids)
    np.testing.assert_array_equal(idx, r.assignment)
    assert np.isclose(float((w.astype(np.float32).astype(np.float64) * dist).sum()), r.inertia, rtol=1e-9)
    _, ref_dist = _brute_force(x, r.centroids)
    assert (dist <= ref_dist * (1 + 1e-5) + 1e-6).all()


def test_unit_weights_equal_unweighted_and_float64_input_converted() -> None:
    x = _realistic(2000, 6, 2)
    a = kmeans(x, 40, max_iter=5)
    b = kmeans(x, 40, np.ones(2000), max_iter=5)
    np.testing.assert_array_equal(a.centroids, b.centroids)
    np.testing.assert_array_equal(a.assignment, b.assignment)
    c = kmeans(x.astype(np.float64), 10, max_iter=3)
    d = kmeans(x, 10, max_iter=3)
    np.testing.assert_array_equal(c.centroids, d.centroids)


def test_deterministic_for_seed_and_thread_count(restore_threads: None) -> None:
    x = _realistic(4000, 8, 4)
    w = np.random.default_rng(5).uniform(0.1, 3.0, size=4000).astype(np.float32)
    runs = []
    for threads in (1, 2):
        vptq.set_num_threads(threads)
        runs.append(kmeans(x, 64, w, max_iter=6, seed=11, init="k-means++"))
        runs.append(kmeans(x, 64, w, max_iter=6, seed=11))
    for i in (0, 1):
        np.testing.assert_array_equal(runs[i].centroids, runs[i + 2].centroids)
        np.testing.assert_array_equal(runs[i].assignment, runs[i + 2].assignment)
        assert runs[i].inertia_history == runs[i + 2].inertia_history
    other = kmeans(x, 64, w, max_iter=6, seed=12)
    assert not np.array_equal(other.centroids, runs[1].centroids)


def test_weighted_mean_tiny_case() -> None:
    x = np.array([[0, 0], [4, 0], [8, 4], [100, 100], [102, 100]], dtype=np.float32)
    w = np.array([1, 1, 2, 3, 1], dtype=np.float32)
    r = kmeans(x, 2, w, init="k-means++")
    order = np.argsort(r.centroids[:, 0])
    np.testing.assert_allclose(r.centroids[order], [[5, 2], [100.5, 100]], rtol=1e-6)


def test_duplicates_and_max_iter_zero() -> None:
    x = np.zeros((100, 1), dtype=np.float32)
    x[40] = 10
    x[77] = 20
    r = kmeans(x, 3, seed=0, max_iter=20)
    np.testing.assert_array_equal(np.sort(r.centroids[:, 0]), [0, 10, 20])
    assert r.inertia == 0.0
    r0 = kmeans(x, 3, max_iter=0)
    assert r0.iterations == 0
    assert len(r0.inertia_history) == 1


def test_nearest_centroid_matches_brute_force_at_every_level(simd_level: str) -> None:
    rng = np.random.default_rng(7)
    for d in (1, 2, 3, 6, 8, 12, 16):
        c = rng.integers(-4, 5, size=(101, d)).astype(np.float32)
        c[50:60] = c[10:20]  # exact duplicates: the lower index must win
        x = rng.integers(-5, 6, size=(77, d)).astype(np.float32)
        idx, dist = nearest_centroid(x, c)
        ref_idx, ref_dist = _brute_force(x, c)
        np.testing.assert_array_equal(idx, ref_idx)
        np.testing.assert_array_equal(dist, ref_dist.astype(np.float32))
    idx, dist = nearest_centroid(np.zeros((0, 4), dtype=np.float32), np.ones((3, 4), dtype=np.float32))
    assert idx.shape == (0,)
    assert dist.shape == (0,)


def test_kmeans_same_result_at_every_level_on_exact_data(simd_level: str) -> None:
    rng = np.random.default_rng(8)
    x = rng.integers(-8, 9, size=(600, 4)).astype(np.float32)
    r = kmeans(x, 16, max_iter=1, seed=2)
    # One iteration from the same init: assignment of exact data is level independent.
    idx, _ = _brute_force(x, r.centroids)
    np.testing.assert_array_equal(r.assignment, idx)


def test_large_k_assignment_is_optimal_at_every_level(simd_level: str) -> None:
    # k >= 2048: later passes use the hinted (norm-range pruned) search.
    x = _realistic(4100, 4, 9) * np.random.default_rng(3).lognormal(0, 1, size=(4100, 1)).astype(np.float32)
    r = kmeans(x, 2048, max_iter=3, seed=1)
    _, ref_dist = _brute_force(x, r.centroids)
    diff = x.astype(np.float64) - r.centroids[r.assignment].astype(np.float64)
    got = (diff**2).sum(axis=1)
    assert (got <= ref_dist * (1 + 1e-5) + 1e-6).all()


@pytest.mark.parametrize(
    ("kwargs", "exc"),
    [
        ({"x": np.zeros((10, 4), dtype=np.complex64)}, TypeError),
        ({"x": np.zeros((10, 4), dtype=np.int64)}, TypeError),
        ({"x": [[0.0] * 4] * 10}, TypeError),
        ({"x": np.array([["a"] * 4] * 10)}, TypeError),
        ({"k": 2.0}, TypeError),
        ({"k": True}, TypeError),
        ({"max_iter": 1.5}, TypeError),
        ({"seed": "0"}, TypeError),
        ({"init": 1}, TypeError),
        ({"x": np.zeros(10, dtype=np.float32)}, ValueError),
        ({"x": np.zeros((10, 17), dtype=np.float32)}, ValueError),
        ({"x": np.zeros((10, 0), dtype=np.float32)}, ValueError),
        ({"x": np.zeros((0, 4), dtype=np.float32), "k": 1}, ValueError),
        ({"x": np.full((10, 4), np.nan, dtype=np.float32)}, ValueError),
        ({"x": np.full((10, 4), 1e39)}, ValueError),
        ({"k": 11}, ValueError),
        ({"k": 0}, ValueError),
        ({"weights": -np.ones(10)}, ValueError),
        ({"weights": np.full(10, np.nan)}, ValueError),
        ({"weights": np.ones(9)}, ValueError),
        ({"weights": np.ones(10, dtype=np.complex64)}, TypeError),
        ({"max_iter": -1}, ValueError),
        ({"tol": -1.0}, ValueError),
        ({"tol": float("nan")}, ValueError),
        ({"seed": -1}, ValueError),
        ({"seed": 2**64}, ValueError),
        ({"init": "kmeans||"}, ValueError),
    ],
)
def test_kmeans_rejects_bad_input(kwargs: dict, exc: type[Exception]) -> None:
    args = {"x": np.arange(40, dtype=np.float32).reshape(10, 4), "k": 3}
    args.update(kwargs)
    x = args.pop("x")
    k = args.pop("k")
    with pytest.raises(exc):
        kmeans(x, k, **args)


def test_nearest_centroid_rejects_bad_input() -> None:
    c = np.ones((3, 4), dtype=np.float32)
    with pytest.raises(ValueError, match="shape"):
        nearest_centroid(np.ones((5, 3), dtype=np.float32), c)
    with pytest.raises(ValueError, match="finite"):
        nearest_centroid(np.full((5, 4), np.inf, dtype=np.float32), c)
    with pytest.raises(ValueError, match="non-empty"):
        nearest_centroid(np.ones((5, 4), dtype=np.float32), np.ones((0, 4), dtype=np.float32))
    with pytest.raises(TypeError):
        nearest_centroid(np.ones((5, 4), dtype=bool), c)
    with pytest.raises(ValueError, match="columns"):
        nearest_centroid(np.ones((5, 17), dtype=np.float32), np.ones((2, 17), dtype=np.float32))


def test_core_does_not_convert_and_checks_shapes() -> None:
    with pytest.raises(TypeError):
        _core.kmeans(np.ones((10, 4)), 2)  # float64: no silent conversion
    with pytest.raises(TypeError):
        _core.nearest_centroid(np.ones((10, 4)), np.ones((2, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="weights"):
        _core.kmeans(np.ones((10, 4), dtype=np.float32), 2, np.ones(3, dtype=np.float32))
    with pytest.raises(ValueError, match="x"):
        _core.nearest_centroid(np.ones((10, 3), dtype=np.float32), np.ones((2, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="k"):
        _core.kmeans(np.ones((10, 4), dtype=np.float32), 11)
