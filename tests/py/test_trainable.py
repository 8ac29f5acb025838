"""TrainableQuantizedLinear, make_trainable, freeze: exact reconstruction, gradients, lossless
export through the official format, and a real optimisation step."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import vptq
from tiny_hf import one_thread  # noqa: F401 (a fixture)
from vptq import QuantConfig, QuantizedWeight, quantize_weight
from vptq.runtime.torch import QuantizedLinear
from vptq.runtime.trainable import TrainableQuantizedLinear, freeze, make_trainable

QW_ARRAYS = ("centroids", "indices", "res_centroids", "res_indices", "outlier_centroids", "outlier_indices",
             "perm", "scale", "bias")
TRAINABLE = ("centroids", "res_centroids", "outlier_centroids", "weight_scale", "weight_bias")


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny layers: threads only add noise


def random_layer(M: int, N: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(W [M, N] float32, H = E[x xᵀ] [N, N], calibration inputs X [4N, N]) with uneven channels."""
    rng = np.random.default_rng(seed)
    W = (0.02 * rng.standard_normal((M, N)) * (0.5 + rng.random(N))).astype(np.float32)
    X = rng.standard_normal((4 * N, N)) * rng.uniform(0.2, 2.0, N)
    return W, X.T @ X / len(X), X


def small(**kw: Any) -> QuantConfig:
    return QuantConfig(**{"vector_len": 4, "num_centroids": 16, "kmeans_iters": 3, **kw})


OUTLIERS = {"outlier_percent": 10.0, "outlier_vector_len": 4, "outlier_centroids": 8}
# (out_features, in_features, config): every layout feature, several rows not a multiple of v / v0.
CASES = {
    "plain-v8": (36, 48, small(vector_len=8)),
    "v8-k256-256": (64, 64, QuantConfig.preset("v8-k256-256", kmeans_iters=3)),
    "residual-v6": (40, 32, small(vector_len=6, num_centroids=32, num_res_centroids=8)),
    "outliers": (30, 40, small(num_res_centroids=8, **OUTLIERS)),
    "outliers-groups": (36, 42, small(vector_len=8, num_res_centroids=4, group_num=2, **OUTLIERS)),
    "groups-4": (32, 48, small(num_res_centroids=4, group_num=4)),
    "no-perm": (30, 40, small(num_res_centroids=8, enable_perm=False, **OUTLIERS)),
    "no-norm": (30, 40, small(num_res_centroids=8, enable_norm=False, **OUTLIERS)),
    "no-norm-no-perm": (28, 24, small(enable_norm=False, enable_perm=False, group_num=2)),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request: pytest.FixtureRequest) -> tuple[QuantizedWeight, np.ndarray]:
    """(QuantizedWeight from quantize_weight, layer bias)."""
    M, N, cfg = CASES[request.param]
    W, H, _ = random_layer(M, N)
    qw = quantize_weight(W, H, cfg)
    bias = np.random.default_rng(1).standard_normal(M).astype(np.float32)
    return qw, bias


def bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


# ------------------------------------------------------------------------------- reconstruction
def test_dequantize_is_bit_identical(case: tuple[QuantizedWeight, np.ndarray]) -> None:
    qw, _ = case
    t = TrainableQuantizedLinear(qw)
    W_hat = t.dequantize()
    assert W_hat.dtype == torch.float32
    assert tuple(W_hat.shape) == qw.shape
    assert W_hat.requires_grad
    np.testing.assert_array_equal(bits(W_hat.detach().numpy()), bits(qw.dequantize()))


@pytest.mark.parametrize("enable_norm", [True, False])
def test_negative_zero_codewords_are_bit_identical(enable_norm: bool) -> None:
    """The C++ dequantize evaluates x * scale + bias (x * 1 + 0 without norm): -0.0 becomes +0.0."""
    src = quantize_weight(*random_layer(16, 24)[:2], small(enable_norm=enable_norm))
    centroids = src.centroids.copy()
    centroids[:, 0, :] = -0.0
    indices = src.indices.copy()
    indices[:, 0, :] = 0
    qw = QuantizedWeight(src.layout, centroids, indices, perm=src.perm, scale=src.scale, bias=src.bias)
    if enable_norm:  # a zero scale/bias column keeps the sign question alive with norm on too
        qw.scale[0], qw.bias[0] = 0.0, -0.0
    np.testing.assert_array_equal(bits(TrainableQuantizedLinear(qw).dequantize().detach().numpy()),
                                  bits(qw.dequantize()))


def test_layout_features_are_covered() -> None:
    """The cases above really exercise residual, outliers, groups, padding, perm and norm on/off."""
    L = {name: quantize_weight(*random_layer(M, N)[:2], cfg) for name, (M, N, cfg) in CASES.items()}
    assert any(q.layout["k2"] > 0 for q in L.values())
    assert any(q.layout["outlier_size"] > 0 and q.out_features % q.layout["v0"] for q in L.values())
    assert any(q.layout["group_num"] > 1 and q.layout["outlier_size"] > 0 for q in L.values())
    assert any(q.out_features % q.layout["v"] for q in L.values())
    assert {q.enable_perm for q in L.values()} == {True, False}
    assert {q.enable_norm for q in L.values()} == {True, False}
    assert any(q.perm is not None and not np.array_equal(q.perm, np.arange(q.in_features)) for q in L.values())


def test_parameters_and_buffers(case: tuple[QuantizedWeight, np.ndarray]) -> None:
    qw, bias = case
    t = TrainableQuantizedLinear(qw, torch.from_numpy(bias))
    params = dict(t.named_parameters())
    expected = {"centroids": qw.centroids, "res_centroids": qw.res_centroids,
                "outlier_centroids": qw.outlier_centroids, "weight_scale": qw.scale, "weight_bias": qw.bias}
    assert set(params) == {k for k, a in expected.items() if a is not None}
    for k, p in params.items():
        assert p.dtype == torch.float32
        assert p.requires_grad
        np.testing.assert_array_equal(p.detach().numpy(), expected[k])
    buffers = dict(t.named_buffers())
    for k in ("indices", "res_indices", "outlier_indices", "perm"):
        a = getattr(qw, k)
        assert (k in buffers) == (a is not None)
        if a is not None:
            assert not buffers[k].is_floating_point()
            np.testing.assert_array_equal(buffers[k].numpy(), a.astype(np.int64))
    assert not buffers["bias"].requires_grad
    np.testing.assert_array_equal(buffers["bias"].numpy(), bias)
    assert (t.in_features, t.out_features) == (qw.in_features, qw.out_features)


def test_forward_matches_dense_and_inference_module(case: tuple[QuantizedWeight, np.ndarray]) -> None:
    qw, bias = case
    t = TrainableQuantizedLinear(qw, bias)
    x = torch.randn(2, 5, qw.in_features, generator=torch.Generator().manual_seed(0))
    y = t(x)
    assert tuple(y.shape) == (2, 5, qw.out_features)
    assert y.dtype == torch.float32
    W64 = torch.from_numpy(qw.dequantize()).double()
    ref = x.double() @ W64.T + torch.from_numpy(bias).double()
    torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        y_inf = QuantizedLinear(qw, bias=bias)(x)
    torch.testing.assert_close(y.detach(), y_inf, rtol=1e-5, atol=1e-6)
    # other float dtypes in -> same dtype out; float64 in uses float32 math
    y16 = t(x.to(torch.bfloat16))
    assert y16.dtype == torch.bfloat16
    assert t(x.double()).dtype == torch.float64


def test_without_layer_bias() -> None:
    qw = quantize_weight(*random_layer(24, 32)[:2], small())
    t = TrainableQuantizedLinear(qw)
    assert t.bias is None
    x = torch.randn(3, 32, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(t(x), x @ t.dequantize().T, rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------------------------ gradients
@pytest.mark.parametrize("enable_norm", [True, False])
def test_gradcheck_all_parameters(enable_norm: bool) -> None:
    cfg = QuantConfig(vector_len=4, num_centroids=8, num_res_centroids=4, outlier_percent=10.0,
                      outlier_vector_len=4, outlier_centroids=4, group_num=2, enable_norm=enable_norm,
                      kmeans_iters=2)
    qw = quantize_weight(*random_layer(10, 12, seed=3)[:2], cfg)  # 10 rows: padded last row block
    assert qw.layout["outlier_size"] > 0
    assert qw.layout["group_num"] == 2
    bias = np.linspace(-1, 1, 10)
    t = TrainableQuantizedLinear(qw, bias, dtype=torch.float64)
    names = [n for n, _ in t.named_parameters()]
    assert set(names) == set(TRAINABLE if enable_norm else TRAINABLE[:3])
    params = tuple(p.detach().clone().requires_grad_() for _, p in t.named_parameters())
    x = torch.randn(3, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(2), requires_grad=True)

    def f(x: Any, *ps: Any) -> Any:
        return torch.func.functional_call(t, dict(zip(names, ps, strict=True)), (x,))

    assert torch.autograd.gradcheck(f, (x, *params), eps=1e-6, atol=1e-7, rtol=1e-6)


def test_unused_codebook_entries_get_zero_gradient() -> None:
    cfg = small(num_centroids=32, num_res_centroids=16, group_num=2, **OUTLIERS)
    src = quantize_weight(*random_layer(24, 40, seed=4)[:2], cfg)
    # only the lower half of every codebook is referenced
    qw = QuantizedWeight(src.layout, src.centroids, src.indices % 16, res_centroids=src.res_centroids,
                         res_indices=src.res_indices % 8, outlier_centroids=src.outlier_centroids,
                         outlier_indices=src.outlier_indices % 4, perm=src.perm, scale=src.scale, bias=src.bias)
    t = TrainableQuantizedLinear(qw)
    x = torch.randn(7, 40, generator=torch.Generator().manual_seed(5))
    (t(x) ** 2).sum().backward()
    for name, idx, half in (("centroids", qw.indices, 16), ("res_centroids", qw.res_indices, 8)):
        g = getattr(t, name).grad
        for grp in range(2):
            used = np.unique(idx[grp]).astype(np.int64)
            unused = np.setdiff1d(np.arange(g.shape[1]), used)
            assert set(range(half, g.shape[1])) <= set(unused.tolist())
            assert torch.count_nonzero(g[grp, torch.from_numpy(unused)]) == 0
            assert torch.all(g[grp, torch.from_numpy(used)].abs().sum(dim=1) > 0)
    g = t.outlier_centroids.grad
    used = np.unique(qw.outlier_indices).astype(np.int64)
    unused = np.setdiff1d(np.arange(g.shape[0]), used)
    assert len(unused) >= 4
    assert torch.count_nonzero(g[torch.from_numpy(unused)]) == 0
    assert torch.all(g[torch.from_numpy(used)].abs().sum(dim=1) > 0)
    for name in ("weight_scale", "weight_bias"):
        assert torch.count_nonzero(getattr(t, name).grad) > 0


def test_adam_on_codebooks_reduces_output_error() -> None:
    M, N = 48, 64
    W, H, X = random_layer(M, N, seed=6)
    qw = quantize_weight(W, H, small(num_res_centroids=8, **OUTLIERS))
    t = TrainableQuantizedLinear(qw)
    x = torch.from_numpy(X.astype(np.float32))
    target = x @ torch.from_numpy(W).T
    codebooks = [t.centroids, t.res_centroids, t.outlier_centroids]
    opt = torch.optim.Adam(codebooks, lr=1e-3)
    before = {k: b.clone() for k, b in t.named_buffers()}
    losses = []
    for _ in range(6):
        opt.zero_grad()
        loss = ((t(x) - target) ** 2).sum()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        losses.append(((t(x) - target) ** 2).sum().item())
    assert all(b < a for a, b in itertools.pairwise(losses)), losses
    assert losses[-1] < 0.99 * losses[0]
    for k, b in t.named_buffers():  # indices and perm never move
        assert torch.equal(b, before[k])
    # scale/bias were not in the optimiser: unchanged
    np.testing.assert_array_equal(t.weight_scale.detach().numpy(), qw.scale)
    # the export holds exactly the trained values
    out = t.to_quantized_weight()
    np.testing.assert_array_equal(bits(out.dequantize()), bits(t.dequantize().detach().numpy()))
    assert not np.array_equal(out.centroids, qw.centroids)


# ------------------------------------------------------------------------------- export / save
def assert_same_weight(a: QuantizedWeight, b: QuantizedWeight) -> None:
    assert a.layout == b.layout
    for k in QW_ARRAYS:
        x, y = getattr(a, k), getattr(b, k)
        assert (x is None) == (y is None), k
        if x is not None:
            assert x.dtype == y.dtype, k
            assert x.shape == y.shape, k
            assert x.tobytes() == y.tobytes(), k


def assert_same_tensors(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert sorted(a) == sorted(b)
    for k, x in a.items():
        assert x.dtype == b[k].dtype, k
        assert x.shape == b[k].shape, k
        assert np.ascontiguousarray(x).tobytes() == np.ascontiguousarray(b[k]).tobytes(), k


def test_zero_steps_export_save_reload_is_bit_identical(case: tuple[QuantizedWeight, np.ndarray]) -> None:
    qw, bias = case
    t = TrainableQuantizedLinear(qw, bias)
    out = t.to_quantized_weight()
    assert_same_weight(out, qw)
    assert out.config == qw.config
    assert_same_weight(t.to_quantized_weight("float16"), qw)  # already fp16-exact
    sd = out.state_dict()
    assert_same_tensors(sd, qw.state_dict())
    assert out.layer_config(bias=True) == qw.layer_config(bias=True)
    back = QuantizedWeight.from_state_dict(sd, out.layer_config(bias=True))
    assert_same_weight(back, qw)
    # and a trainable layer of the reloaded weight reconstructs the same Ŵ
    again = TrainableQuantizedLinear(back, bias).dequantize().detach().numpy()
    np.testing.assert_array_equal(bits(again), bits(t.dequantize().detach().numpy()))


def test_saving_only_rounds_to_storage_dtype() -> None:
    qw = quantize_weight(*random_layer(30, 40)[:2], small(num_res_centroids=8, **OUTLIERS))
    t = TrainableQuantizedLinear(qw)
    with torch.no_grad():
        for p in t.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(7)) * 1e-3)
    exact = t.to_quantized_weight()
    rounded = t.to_quantized_weight("float16")
    for k in ("centroids", "res_centroids", "outlier_centroids", "scale", "bias"):
        a, r = getattr(exact, k), getattr(rounded, k)
        assert not np.array_equal(a, a.astype(np.float16).astype(np.float32)), k  # really off the fp16 grid
        np.testing.assert_array_equal(r, a.astype(np.float16).astype(np.float32))
    assert_same_tensors(exact.state_dict("float16"), rounded.state_dict("float16"))
    reloaded = QuantizedWeight.from_state_dict(exact.state_dict("float16"), exact.layer_config())
    assert_same_weight(reloaded, rounded)
    # float32 storage keeps the trained values exactly
    kept = QuantizedWeight.from_state_dict(exact.state_dict("float32"), exact.layer_config())
    assert_same_weight(kept, exact)
    np.testing.assert_array_equal(bits(kept.dequantize()), bits(t.dequantize().detach().numpy()))


def test_float64_parameters_export_as_float32() -> None:
    qw = quantize_weight(*random_layer(16, 16)[:2], small(num_res_centroids=4))
    t = TrainableQuantizedLinear(qw, dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in t.parameters())
    # float64 math: only the float32 roundings of the sum and of x * scale + bias differ
    np.testing.assert_allclose(t.dequantize().detach().numpy(), qw.dequantize(), rtol=1e-6, atol=1e-8)
    assert_same_weight(t.to_quantized_weight(), qw)


def test_to_quantized_linear_matches_reloaded_inference() -> None:
    qw = quantize_weight(*random_layer(30, 40)[:2], small(num_res_centroids=8, **OUTLIERS))
    bias = np.arange(30, dtype=np.float32) / 30
    t = TrainableQuantizedLinear(qw, bias)
    with torch.no_grad():
        t.centroids.mul_(1.001)
    q = t.to_quantized_linear()
    assert isinstance(q, QuantizedLinear)
    ref = QuantizedLinear(t.to_quantized_weight("float16"), bias=bias)
    x = torch.randn(4, 40, generator=torch.Generator().manual_seed(8))
    assert torch.equal(q(x), ref(x))


# ------------------------------------------------------------------------------------- errors
def test_bad_inputs() -> None:
    qw = quantize_weight(*random_layer(16, 24)[:2], small())
    with pytest.raises(TypeError, match="QuantizedWeight"):
        TrainableQuantizedLinear(qw.dequantize())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"bias: expected shape \(16,\)"):
        TrainableQuantizedLinear(qw, np.zeros(24, np.float32))
    with pytest.raises(TypeError, match="bias: expected a floating dtype"):
        TrainableQuantizedLinear(qw, torch.zeros(16, dtype=torch.int64))
    with pytest.raises(TypeError, match="bias"):
        TrainableQuantizedLinear(qw, [0.0] * 16)
    with pytest.raises(ValueError, match="finite"):
        TrainableQuantizedLinear(qw, np.full(16, np.nan, np.float32))
    with pytest.raises(ValueError, match=r"dtype: expected torch\.float32 or torch\.float64"):
        TrainableQuantizedLinear(qw, dtype=torch.float16)
    with pytest.raises(TypeError, match=r"dtype: expected a torch\.dtype"):
        TrainableQuantizedLinear(qw, dtype="float32")  # type: ignore[arg-type]
    t = TrainableQuantizedLinear(qw)
    with pytest.raises(ValueError, match=r"x: expected shape \(\.\.\., 24\), got \(3, 16\)"):
        t(torch.zeros(3, 16))
    with pytest.raises(ValueError, match="x: expected shape"):
        t(torch.tensor(1.0))
    with pytest.raises(TypeError, match=r"x: expected a torch\.Tensor"):
        t(np.zeros((3, 24), np.float32))
    with pytest.raises(TypeError, match="x: expected a floating dtype"):
        t(torch.zeros(3, 24, dtype=torch.int64))
    with pytest.raises(ValueError, match="round_to"):
        t.to_quantized_weight("bfloat16")
    with torch.no_grad():
        t.centroids[0, 0, 0] = 1e6  # beyond the float16 range
    t.to_quantized_weight()  # fine in float32
    with pytest.raises(ValueError, match="centroids: expected finite values after rounding to float16"):
        t.to_quantized_weight("float16")
    with torch.no_grad():
        t.weight_scale[3] = float("nan")
    with pytest.raises(ValueError, match="weight_scale: expected finite values"):
        t.to_quantized_weight()


# --------------------------------------------------------------------------------- model level
def tiny_llama(seed: int = 0) -> Any:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(
        hidden_size=32, num_hidden_layers=1, intermediate_size=64, vocab_size=64, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False, attention_bias=True,
    )
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith(".bias"):
                p.add_(torch.randn_like(p) * 0.1)
    return model


MODEL_CONFIGS = {
    "q_proj": small(num_res_centroids=8),
    "k_proj": small(vector_len=8, num_centroids=32),
    "v_proj": small(enable_perm=False),
    "o_proj": small(num_res_centroids=4, group_num=2, **OUTLIERS),
    "gate_proj": small(enable_norm=False),
    "up_proj": small(vector_len=6, num_res_centroids=8),
}  # down_proj stays a plain Linear


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(path))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("safetensors")
    model = tiny_llama()
    rng = np.random.default_rng(0)
    quantized = {}
    for name, mod in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if isinstance(mod, torch.nn.Linear) and leaf in MODEL_CONFIGS:
            W = mod.weight.detach().numpy()
            X = rng.standard_normal((128, W.shape[1])) * rng.uniform(0.2, 2.0, W.shape[1])
            quantized[name] = quantize_weight(W, X.T @ X / 128, MODEL_CONFIGS[leaf])
    out = tmp_path_factory.mktemp("trainable") / "tiny-vptq"
    vptq.save_quantized(out, model, quantized)
    return out


def test_model_zero_steps_round_trip_is_bit_identical(checkpoint: Path, tmp_path: Path) -> None:
    model, _ = vptq.load_model(checkpoint)
    config, layers, _ = vptq.load_quantized_state(checkpoint)
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(ids).logits
    mods = make_trainable(model, layers)
    assert set(mods) == set(layers)
    named = dict(model.named_modules())
    for name, m in mods.items():
        assert named[name] is m
        assert isinstance(m, TrainableQuantizedLinear)
        assert not m.training  # load_model returns an eval() model; the mode is kept
    assert isinstance(named["model.layers.0.mlp.down_proj"], torch.nn.Linear)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, before, rtol=1e-4, atol=1e-5)

    frozen = freeze(model)
    assert set(frozen) == set(layers)
    assert not any(isinstance(m, TrainableQuantizedLinear) for m in model.modules())
    for name, qw in frozen.items():
        assert_same_weight(qw, layers[name])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, before)

    out = tmp_path / "again"
    vptq.save_quantized(out, (model.config, model.state_dict()), frozen)
    assert_same_tensors(read_safetensors(out / "model.safetensors"), read_safetensors(checkpoint / "model.safetensors"))
    config2, layers2, _ = vptq.load_quantized_state(out)
    assert config2["quantization_config"]["config_for_layers"] == config["quantization_config"]["config_for_layers"]
    for name in layers:
        assert_same_weight(layers2[name], layers[name])


def test_model_fine_tune_freeze_save_reload(checkpoint: Path, tmp_path: Path) -> None:
    model, _ = vptq.load_model(checkpoint)
    _, layers, _ = vptq.load_quantized_state(checkpoint)
    subset = {k: v for k, v in layers.items() if k.endswith(("q_proj", "o_proj"))}
    mods = make_trainable(model, subset)
    assert set(mods) == set(subset)
    for p in model.parameters():
        p.requires_grad_(False)
    params = [p for m in mods.values() for p in m.parameters()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=1e-2)
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(1))
    model.train()
    for _ in range(2):
        opt.zero_grad()
        loss = model(ids, labels=ids).loss
        loss.backward()
        opt.step()
    model.eval()
    frozen = freeze(model)
    assert set(frozen) == set(subset)
    assert any(not np.array_equal(frozen[n].centroids, subset[n].centroids) for n in subset)
    with torch.no_grad():
        want = model(ids).logits
    out = tmp_path / "tuned"
    # layers that were not fine-tuned keep the weights they were loaded with
    vptq.save_quantized(out, (model.config, model.state_dict()), {**layers, **frozen})
    reloaded, _ = vptq.load_model(out)
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, want)  # freeze rounded exactly as the file stores


def test_make_trainable_errors(checkpoint: Path) -> None:
    model, _ = vptq.load_model(checkpoint)
    _, layers, _ = vptq.load_quantized_state(checkpoint)
    with pytest.raises(TypeError, match="model"):
        make_trainable(layers)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="down_proj"):
        make_trainable(model, {"model.layers.0.mlp.down_proj": layers["model.layers.0.self_attn.q_proj"]})
    with pytest.raises(TypeError, match="QuantizedWeight"):
        make_trainable(model, {"model.layers.0.self_attn.q_proj": np.zeros(3)})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="at least one"):
        make_trainable(model, {})
    q, k = "model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj"
    other = QuantizedWeight(layers[q].layout, layers[q].centroids[:, ::-1].copy(), layers[q].indices,
                            res_centroids=layers[q].res_centroids, res_indices=layers[q].res_indices,
                            perm=layers[q].perm, scale=layers[q].scale, bias=layers[q].bias)
    with pytest.raises(ValueError, match="does not dequantize to the module's weight"):
        make_trainable(model, {k: layers[k], q: other})
    with pytest.raises(ValueError, match="expected shape"):
        make_trainable(model, {"model.layers.0.self_attn.v_proj": layers[q]})
    # nothing was swapped by the failed calls
    assert not any(isinstance(m, TrainableQuantizedLinear) for m in model.modules())
    with pytest.raises(ValueError, match="no TrainableQuantizedLinear"):
        freeze(model)
    # vptq.load_model's modules carry their QuantizedWeight: no mapping needed, unless one does not
    assert all(isinstance(model.get_submodule(n).qweight, QuantizedWeight) for n in layers)
    kept = model.get_submodule(q).qweight
    model.get_submodule(q).qweight = None
    with pytest.raises(ValueError, match="load_quantized_state"):
        make_trainable(model)
    assert not any(isinstance(m, TrainableQuantizedLinear) for m in model.modules())
    model.get_submodule(q).qweight = kept
    assert set(make_trainable(model)) == set(layers)
    with pytest.raises(ValueError, match="round_to"):
        freeze(model, round_to="int8")
    with pytest.raises(ValueError, match=r"no vptq\.runtime\.torch\.QuantizedLinear"):
        make_trainable(model)
