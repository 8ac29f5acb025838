"""Official-format VPTQ checkpoints: exact file layout, round trips, loading into a transformers
model running our kernel, atomic saves, and clear errors for corrupt checkpoints."""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

safetensors_numpy = pytest.importorskip("safetensors.numpy")

import vptq
from vptq.config import QuantConfig
from vptq.formats import checkpoint as vio
from vptq.quant.quantize import LAYER_CONFIG_KEYS, QuantizedWeight, quantize_weight

# Per-leaf configs covering residual / outliers + groups / no norm / no perm.
LEAF_CONFIGS = {
    "q_proj": QuantConfig(vector_len=4, num_centroids=16, num_res_centroids=8, kmeans_iters=5),
    "k_proj": QuantConfig(vector_len=4, num_centroids=16, num_res_centroids=8, kmeans_iters=5),
    "v_proj": QuantConfig(vector_len=8, num_centroids=32, kmeans_iters=5),
    "o_proj": QuantConfig(vector_len=4, num_centroids=16, num_res_centroids=4, outlier_percent=5.0,
                          outlier_vector_len=4, outlier_centroids=16, group_num=2, kmeans_iters=5),
    "gate_proj": QuantConfig(vector_len=4, num_centroids=16, enable_norm=False, kmeans_iters=5),
    "up_proj": QuantConfig(vector_len=6, num_centroids=16, num_res_centroids=16, enable_perm=False,
                           kmeans_iters=5),
    "down_proj": QuantConfig(vector_len=4, num_centroids=32, num_res_centroids=8, kmeans_iters=5),
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Any:
    """Tiny layers: avoid OpenMP barrier cost on a busy machine (results do not depend on it)."""
    n = vptq.get_num_threads()
    vptq.set_num_threads(1)
    torch = None
    try:
        import torch

        n_torch = torch.get_num_threads()
        torch.set_num_threads(1)
    except ImportError:
        pass
    yield
    vptq.set_num_threads(n)
    if torch is not None:
        torch.set_num_threads(n_torch)


def byte_tokenizer() -> Any:
    """A 256-token byte-level tokenizer (no download)."""
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    alphabet = sorted(tokenizers.pre_tokenizers.ByteLevel.alphabet())
    tok = tokenizers.Tokenizer(tokenizers.models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=alphabet[2])


def tiny_llama(tied: bool, bias: bool, seed: int = 0) -> Any:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(
        hidden_size=64, num_hidden_layers=2, intermediate_size=128, vocab_size=256, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=tied, attention_bias=bias,
    )
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():  # make norms and biases non-trivial
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith(".bias"):
                p.add_(torch.randn_like(p) * 0.1)
    return model


def quantize_model(model: Any, names: list[str] | None = None, seed: int = 0) -> dict[str, QuantizedWeight]:
    import torch

    rng = np.random.default_rng(seed)
    out = {}
    for name, mod in model.named_modules():
        if not isinstance(mod, torch.nn.Linear) or ".layers." not in name:
            continue
        if names is not None and name not in names:
            continue
        W = mod.weight.detach().numpy()
        X = rng.standard_normal((256, W.shape[1])) * rng.uniform(0.2, 2.0, W.shape[1])
        out[name] = quantize_weight(W, X.T @ X / 256, LEAF_CONFIGS[name.rsplit(".", 1)[-1]])
    return out


def dequantized_reference(model: Any, quantized: dict[str, QuantizedWeight]) -> Any:
    """The model a checkpoint stands for: Linear weights = Ŵ, other floats rounded through fp16."""
    import torch

    ref = copy.deepcopy(model)
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(p.half().float())
        for name, qw in quantized.items():
            ref.get_submodule(name).weight.copy_(torch.from_numpy(qw.dequantize()))
    return ref


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Tied embeddings + attention biases, every decoder Linear quantized, with a tokenizer."""
    model = tiny_llama(tied=True, bias=True)
    quantized = quantize_model(model)
    tok = byte_tokenizer()
    out = tmp_path_factory.mktemp("ckpt") / "tiny-vptq"
    vio.save_quantized(out, model, quantized, tokenizer=tok, extra_metadata={"calib": "random", "n": 3})
    return {"model": model, "quantized": quantized, "dir": out, "tokenizer": tok}


@pytest.fixture(scope="module")
def saved_partial(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Untied embeddings, no biases, only block 1 quantized."""
    model = tiny_llama(tied=False, bias=False, seed=1)
    names = [n for n, _ in model.named_modules() if ".layers.1." in n and n.endswith("_proj")]
    quantized = quantize_model(model, names, seed=1)
    out = tmp_path_factory.mktemp("ckpt") / "partial"
    vio.save_quantized(out, model, quantized)
    return {"model": model, "quantized": quantized, "dir": out}


def read_config(d: Path) -> dict[str, Any]:
    return json.loads((d / "config.json").read_text())


def expected_layer_tensors(lc: dict[str, Any]) -> dict[str, tuple[tuple[int, ...], Any]]:
    """Official tensor names -> (shape, dtype) of one layer, from its config alone (design note §3.2)."""
    M, N = lc["out_features"], lc["in_features"]
    v0, v = lc["vector_lens"]
    k0, k1 = lc["num_centroids"]
    k2 = lc["num_res_centroids"][1]
    G, gs = lc["group_num"], lc["group_size"]
    b = int(math.log2(k1)) + (int(math.log2(k2)) if k2 > 0 else 0)
    out = {
        "centroids.weight": ((G, k1 * v), np.float16),
        "indices": ((G, -(-M // v), -(-gs * b // 32)), np.int32),
    }
    if k2 > 0:
        out["res_centroids.weight"] = ((G, k2 * v), np.float16)
    if v0 > 1 and k0 > 0:
        out["outlier_centroids.weight"] = ((1, k0 * v0), np.float16)
        out["outlier_indices"] = ((1, -(-M // v0), lc["outlier_size"]), np.int16)
    if lc["enable_perm"]:
        out["perm"] = ((N,), np.int16)
    if lc["enable_norm"]:
        out["weight_scale"] = ((N,), np.float16)
        out["weight_bias"] = ((N,), np.float16)
    if lc["bias"]:
        out["bias"] = ((M,), np.float16)
    return out


def decode_bitstream(words: np.ndarray, group_size: int, b1: int, b2: int) -> tuple[np.ndarray, np.ndarray]:
    """Straightforward reference decode of packed int32 rows (LSB-first bitstream, design note §3.3)."""
    T = b1 + b2
    u = words.view(np.uint32).astype(np.uint64)
    idx = np.zeros((*words.shape[:-1], group_size), np.int64)
    res = np.zeros_like(idx)
    for c in range(group_size):
        val = np.zeros(words.shape[:-1], np.uint64)
        for t in range(T):
            p = c * T + t
            bit = (u[..., p // 32] >> np.uint64(p % 32)) & np.uint64(1)
            val |= bit << np.uint64(t)
        idx[..., c] = (val & np.uint64((1 << b1) - 1)).astype(np.int64)
        res[..., c] = (val >> np.uint64(b1)).astype(np.int64)
    return idx, res


# -------------------------------------------------------------------------------------- file layout
def test_files_and_config(saved: dict[str, Any]) -> None:
    d = saved["dir"]
    files = {p.name for p in d.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "vptq_report.json",
            "tokenizer.json", "tokenizer_config.json"} <= files
    assert not [p for p in d.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left
    modes = {p.name: p.stat().st_mode & 0o777 for p in d.iterdir()}
    assert modes["model.safetensors"] == modes["config.json"], modes
    cfg = read_config(d)
    assert cfg["model_type"] == "llama"
    assert cfg["architectures"] == ["LlamaForCausalLM"]
    assert cfg["torch_dtype"] == "float16"
    qc = cfg["quantization_config"]
    assert qc["quant_method"] == "vptq"
    assert qc["shared_layer_config"] == {}
    assert "modules_to_not_convert" not in qc or qc["modules_to_not_convert"] == ["lm_head"]
    assert set(qc["config_for_layers"]) == set(saved["quantized"])
    for name, lc in qc["config_for_layers"].items():
        qw = saved["quantized"][name]
        assert list(lc) == sorted(LAYER_CONFIG_KEYS)  # written with sorted keys, exactly the 13 official ones
        assert lc == qw.layer_config(bias=".self_attn." in name)  # attention_bias=True; the MLP has none
        assert lc["is_indice_packed"] is True
        assert lc["indices_as_float"] is False
    report = json.loads((d / "vptq_report.json").read_text())
    assert report["metadata"] == {"calib": "random", "n": 3}
    assert set(report["layers"]) == set(saved["quantized"])
    for name, entry in report["layers"].items():
        assert entry["bits_per_weight"] == pytest.approx(saved["quantized"][name].bits_per_weight)
    assert set(report["files"]) == files


def test_tensor_names_shapes_dtypes(saved: dict[str, Any], tmp_path: Path) -> None:
    d = saved["dir"]
    model, quantized = saved["model"], saved["quantized"]
    tensors = safetensors_numpy.load_file(str(d / "model.safetensors"))
    layer_cfgs = read_config(d)["quantization_config"]["config_for_layers"]
    seen = set()
    for name, lc in layer_cfgs.items():
        for key, (shape, dt) in expected_layer_tensors(lc).items():
            t = tensors[f"{name}.{key}"]
            assert t.shape == shape, (name, key)
            assert t.dtype == dt, (name, key)
            seen.add(f"{name}.{key}")
        assert f"{name}.weight" not in tensors
    # plain tensors: exactly what save_pretrained writes, minus the quantized weights, in fp16
    model.save_pretrained(str(tmp_path / "hf"))
    hf = safetensors_numpy.load_file(str(tmp_path / "hf" / "model.safetensors"))
    plain = set(hf) - {f"{n}.weight" for n in quantized}
    assert "lm_head.weight" not in hf  # tied
    assert set(tensors) - seen == plain - seen
    for k in plain:
        assert tensors[k].dtype == np.float16
        np.testing.assert_array_equal(tensors[k], hf[k].astype(np.float16))
    # meta data the official loader (accelerate) checks
    from safetensors import safe_open

    with safe_open(str(d / "model.safetensors"), framework="np") as f:
        assert f.metadata() == {"format": "pt"}


def test_packed_bits_follow_official_bitstream(saved: dict[str, Any]) -> None:
    tensors = safetensors_numpy.load_file(str(saved["dir"] / "model.safetensors"))
    for name, qw in saved["quantized"].items():
        L = qw.layout
        idx, res = decode_bitstream(tensors[f"{name}.indices"], L["group_size"], L["index_bits"],
                                    L["res_index_bits"])
        np.testing.assert_array_equal(idx, qw.indices.astype(np.int64))
        if qw.res_indices is not None:
            np.testing.assert_array_equal(res, qw.res_indices.astype(np.int64))
        else:
            assert not res.any()
        if qw.perm is not None:
            perm = tensors[f"{name}.perm"].view(np.uint16).astype(np.int64)
            np.testing.assert_array_equal(perm, qw.perm)
            assert sorted(perm.tolist()) == list(range(qw.in_features))
        if qw.outlier_indices is not None:
            np.testing.assert_array_equal(tensors[f"{name}.outlier_indices"][0].view(np.uint16), qw.outlier_indices)


def test_load_state_round_trip(saved: dict[str, Any]) -> None:
    config, layers, other = vio.load_quantized_state(saved["dir"])
    assert config["quantization_config"]["quant_method"] == "vptq"
    assert set(layers) == set(saved["quantized"])
    for name, qw in saved["quantized"].items():
        np.testing.assert_array_equal(layers[name].dequantize(), qw.dequantize())
        assert layers[name].bits_per_weight == qw.bits_per_weight
    sd = saved["model"].state_dict()
    assert set(other) == {k for k in sd if k != "lm_head.weight"} - {f"{n}.weight" for n in layers}
    for k, a in other.items():
        np.testing.assert_array_equal(a, sd[k].numpy().astype(np.float16))


# ------------------------------------------------------------------------------------- load_model
@pytest.mark.parametrize("which", ["saved", "saved_partial"])
def test_load_model_logits_match_dequantized(which: str, request: pytest.FixtureRequest) -> None:
    torch = pytest.importorskip("torch")
    s = request.getfixturevalue(which)
    from vptq.runtime.torch import QuantizedLinear

    model, tok = vio.load_model(s["dir"])
    assert (tok is not None) == (which == "saved")
    mods = dict(model.named_modules())
    for name in s["quantized"]:
        assert isinstance(mods[name], QuantizedLinear)
    assert sum(isinstance(m, QuantizedLinear) for m in mods.values()) == len(s["quantized"])
    assert not model.training
    ref = dequantized_reference(s["model"], s["quantized"])
    ids = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got, want = model(ids).logits, ref(ids).logits
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    tied = model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert tied == (which == "saved")
    # greedy generation runs through transformers and agrees with the reference model
    kw = {"max_new_tokens": 4, "do_sample": False, "pad_token_id": 0}
    out = model.generate(ids[:1, :8], attention_mask=torch.ones_like(ids[:1, :8]), **kw)
    ref_out = ref.generate(ids[:1, :8], attention_mask=torch.ones_like(ids[:1, :8]), **kw)
    assert out.tolist() == ref_out.tolist()


def test_partial_checkpoint_names_plain_linears(saved_partial: dict[str, Any]) -> None:
    qc = read_config(saved_partial["dir"])["quantization_config"]
    plain = qc["modules_to_not_convert"]
    assert "lm_head" in plain
    assert all(".layers.0." in n for n in plain if n != "lm_head")
    assert len(plain) == 8


@pytest.mark.parametrize("which", ["saved", "saved_partial"])
def test_transformers_vptq_config_covers_every_linear(which: str, request: pytest.FixtureRequest) -> None:
    """transformers' VPTQ integration parses our quantization_config and, skipping the
    modules_to_not_convert, finds a layer config for every Linear it would replace."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    qcfg = pytest.importorskip("transformers.utils.quantization_config")
    qutils = pytest.importorskip("transformers.quantizers.quantizers_utils")
    if not hasattr(qutils, "should_convert_module"):
        pytest.skip("this transformers version has no should_convert_module")
    s = request.getfixturevalue(which)
    qc = read_config(s["dir"])["quantization_config"]
    conf = qcfg.VptqConfig.from_dict(qc)
    skip = conf.modules_to_not_convert if conf.modules_to_not_convert is not None else ["lm_head"]
    replaced = {n for n, m in s["model"].named_modules()
                if isinstance(m, torch.nn.Linear) and qutils.should_convert_module(n, skip)}
    assert replaced == set(conf.config_for_layers) == set(s["quantized"])


def test_loaded_tokenizer_round_trip(saved: dict[str, Any]) -> None:
    _, tok = vio.load_model(saved["dir"])
    text = "Quantized models, 2 bits."
    assert tok(text)["input_ids"] == saved["tokenizer"](text)["input_ids"]


def test_shared_layer_config_and_unknown_keys(saved: dict[str, Any], tmp_path: Path) -> None:
    d = tmp_path / "shared"
    shutil.copytree(saved["dir"], d)
    cfg = read_config(d)
    per = cfg["quantization_config"]["config_for_layers"]
    shared = {}
    for name in list(per):
        leaf = name.rsplit(".", 1)[-1]
        if leaf in ("q_proj", "down_proj"):  # the same config in both blocks
            shared[leaf] = per.pop(name)
    for lc in per.values():  # algorithm-branch extras are tolerated
        lc["norm_dim"] = 0
        lc["enable_proxy_error"] = False
    cfg["quantization_config"]["shared_layer_config"] = shared
    (d / "config.json").write_text(json.dumps(cfg))
    _, layers, _ = vio.load_quantized_state(d)
    assert set(layers) == set(saved["quantized"])
    for name, qw in saved["quantized"].items():
        np.testing.assert_array_equal(layers[name].dequantize(), qw.dequantize())


def test_quantization_config_nested_in_text_config(saved: dict[str, Any], tmp_path: Path) -> None:
    """The official packer puts it under text_config for multimodal models."""
    d = tmp_path / "nested"
    shutil.copytree(saved["dir"], d)
    _edit_config(d, lambda c: c.update(text_config={"quantization_config": c.pop("quantization_config")}))
    _, layers, _ = vio.load_quantized_state(d)
    assert set(layers) == set(saved["quantized"])


def test_save_from_numpy_state_without_model(tmp_path: Path) -> None:
    """(config, state dict) pairs need neither torch nor transformers."""
    rng = np.random.default_rng(3)
    W = rng.standard_normal((48, 32)).astype(np.float32)
    X = rng.standard_normal((128, 32))
    qw = quantize_weight(W, X.T @ X / 128, LEAF_CONFIGS["q_proj"])
    state = {"emb.weight": rng.standard_normal((10, 32)).astype(np.float32), "fc.weight": W,
             "fc.bias": rng.standard_normal(48).astype(np.float32), "step": np.array([3], np.int64)}
    vio.save_quantized(tmp_path / "np", ({"model_type": "toy"}, state), {"fc": qw}, dtype="float32")
    cfg, layers, other = vio.load_quantized_state(tmp_path / "np")
    assert cfg["model_type"] == "toy"
    assert cfg["quantization_config"]["config_for_layers"]["fc"]["bias"] is True
    np.testing.assert_array_equal(layers["fc"].dequantize(), qw.dequantize())
    assert sorted(other) == ["emb.weight", "fc.bias", "step"]
    assert other["emb.weight"].dtype == np.float32
    np.testing.assert_array_equal(other["fc.bias"], state["fc.bias"])
    assert other["step"].dtype == np.int64


def test_bf16_tensors_are_read(saved: dict[str, Any], tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file, save_file

    d = tmp_path / "bf16"
    shutil.copytree(saved["dir"], d)
    t = load_file(str(d / "model.safetensors"))
    t = {k: v.bfloat16() if v.dtype == torch.float16 else v for k, v in t.items()}
    save_file(t, str(d / "model.safetensors"), metadata={"format": "pt"})
    _, layers, other = vio.load_quantized_state(d)
    emb = other["model.embed_tokens.weight"]
    assert emb.dtype == np.float32
    np.testing.assert_array_equal(emb, t["model.embed_tokens.weight"].float().numpy())
    name = "model.layers.0.self_attn.q_proj"
    np.testing.assert_array_equal(layers[name].centroids.reshape(1, -1),
                                  t[f"{name}.centroids.weight"].float().numpy())


# ------------------------------------------------------------------------------------------ atomic
def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_failed_save_leaves_nothing(saved: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    exc: type[BaseException]) -> None:
    calls = []

    def failing_write_json(path: Path, obj: Any) -> None:  # after model.safetensors was written
        calls.append(path.name)
        assert (path.parent / "model.safetensors").is_file()
        raise exc("disk full")

    monkeypatch.setattr(vio, "_write_json", failing_write_json)
    out = tmp_path / "out"
    with pytest.raises(exc, match="disk full"):
        vio.save_quantized(out, saved["model"], saved["quantized"])
    assert calls == ["config.json"]
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_failed_overwrite_keeps_old_checkpoint(saved: dict[str, Any], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "ck"
    shutil.copytree(saved["dir"], out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def failing_tokenizer_save(*_a: Any, **_k: Any) -> None:
        raise OSError("tokenizer failed")

    tok = copy.copy(saved["tokenizer"])
    monkeypatch.setattr(tok, "save_pretrained", failing_tokenizer_save)
    with pytest.raises(OSError, match="tokenizer failed"):
        vio.save_quantized(out, saved["model"], saved["quantized"], tokenizer=tok, overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert _leftovers(tmp_path) == []

    # the final rename fails after the old directory was moved aside: it is put back
    real_rename = os.rename

    def rename(src: Any, dst: Any) -> None:
        if Path(src).name.startswith(".ck.tmp-"):
            raise OSError("rename failed")
        real_rename(src, dst)

    monkeypatch.setattr(vio.os, "rename", rename)
    with pytest.raises(OSError, match="rename failed"):
        vio.save_quantized(out, saved["model"], saved["quantized"], overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert _leftovers(tmp_path) == []


def test_existing_output_and_overwrite(saved_partial: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "ck"
    vio.save_quantized(out, saved_partial["model"], saved_partial["quantized"])
    with pytest.raises(vio.CheckpointExistsError, match="already exists"):
        vio.save_quantized(out, saved_partial["model"], saved_partial["quantized"])
    with pytest.raises(ValueError, match="overwrite=True"):
        vio.save_quantized(out, saved_partial["model"], saved_partial["quantized"])
    (out / "stale.txt").write_text("old")
    vio.save_quantized(out, saved_partial["model"], saved_partial["quantized"], overwrite=True,
                       dtype="float32")
    assert not (out / "stale.txt").exists()
    assert read_config(out)["torch_dtype"] == "float32"
    assert _leftovers(tmp_path) == []
    # never replace a directory that is not a checkpoint
    other = tmp_path / "home"
    other.mkdir()
    (other / "notes.txt").write_text("precious")
    with pytest.raises(ValueError, match="refusing"):
        vio.save_quantized(other, saved_partial["model"], saved_partial["quantized"], overwrite=True)
    assert (other / "notes.txt").read_text() == "precious"


def test_save_argument_errors(saved_partial: dict[str, Any], tmp_path: Path) -> None:
    model, quantized = saved_partial["model"], saved_partial["quantized"]
    with pytest.raises(ValueError, match="dtype"):
        vio.save_quantized(tmp_path / "a", model, quantized, dtype="int8")
    with pytest.raises(ValueError, match="at least one"):
        vio.save_quantized(tmp_path / "a", model, {})
    name = next(iter(quantized))
    with pytest.raises(ValueError, match=r"not a torch\.nn\.Linear"):
        vio.save_quantized(tmp_path / "a", model, {"model.nope": quantized[name]})
    wrong = next(n for n in quantized if quantized[n].shape != quantized[name].shape)
    with pytest.raises(ValueError, match="expected weight shape"):
        vio.save_quantized(tmp_path / "a", model, {wrong: quantized[name]})
    with pytest.raises(TypeError, match="QuantizedWeight"):
        vio.save_quantized(tmp_path / "a", model, {name: np.zeros((2, 2))})
    with pytest.raises(TypeError, match="JSON"):
        vio.save_quantized(tmp_path / "a", model, quantized, extra_metadata={"x": object()})
    with pytest.raises(TypeError, match="model_or_state"):
        vio.save_quantized(tmp_path / "a", 42, quantized)
    assert list(tmp_path.iterdir()) == []


# -------------------------------------------------------------------------------- corrupt checkpoints
def _edit_tensors(d: Path, fn: Any) -> None:
    t = safetensors_numpy.load_file(str(d / "model.safetensors"))
    fn(t)
    safetensors_numpy.save_file(t, str(d / "model.safetensors"), metadata={"format": "pt"})


def _edit_config(d: Path, fn: Any) -> None:
    cfg = read_config(d)
    fn(cfg)
    (d / "config.json").write_text(json.dumps(cfg))


Q = "model.layers.0.self_attn.q_proj"
LC = ("quantization_config", "config_for_layers")


def _cfl(cfg: dict[str, Any]) -> dict[str, Any]:
    return cfg[LC[0]][LC[1]]


def _nan_centroid(t: dict[str, np.ndarray]) -> None:
    c = t[f"{Q}.centroids.weight"].copy()
    c[0, 0] = np.nan
    t[f"{Q}.centroids.weight"] = c


CORRUPTIONS = {
    "no_config": (lambda d: (d / "config.json").unlink(), "missing config.json"),
    "bad_json": (lambda d: (d / "config.json").write_text("{not json"), "cannot parse"),
    "not_vptq": (lambda d: _edit_config(d, lambda c: c.pop("quantization_config")), "not a VPTQ checkpoint"),
    "other_method": (lambda d: _edit_config(d, lambda c: c[LC[0]].update(quant_method="gptq")),
                     "not a VPTQ checkpoint.*'gptq'"),
    "no_layers": (lambda d: _edit_config(d, lambda c: c[LC[0]].update(config_for_layers={})),
                  "lists no quantized layers|not listed"),
    "no_weights": (lambda d: (d / "model.safetensors").unlink(), "no model.safetensors"),
    "truncated": (lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:-100]),
                  "corrupt safetensors"),
    "garbage": (lambda d: (d / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{{{{garbage}}}}"),
                "corrupt safetensors"),
    "missing_tensor": (lambda d: _edit_tensors(d, lambda t: t.pop(f"{Q}.indices")),
                       f"layer {Q}: .*missing tensors \\['indices'\\]"),
    "missing_layer": (lambda d: _edit_tensors(d, lambda t: [t.pop(k) for k in list(t) if k.startswith(Q + ".")]),
                      f"layer {Q}: listed .* no {Q}"),
    "indices_shape": (lambda d: _edit_tensors(d, lambda t: t.update({f"{Q}.indices": t[f"{Q}.indices"][:, :-1]})),
                      f"layer {Q}: .*'indices': expected shape"),
    "indices_dtype": (lambda d: _edit_tensors(
        d, lambda t: t.update({f"{Q}.indices": t[f"{Q}.indices"].astype(np.int16)})),
        f"layer {Q}: .*'indices': expected dtype"),
    "perm_shape": (lambda d: _edit_tensors(d, lambda t: t.update({f"{Q}.perm": t[f"{Q}.perm"][:-1]})),
                   f"layer {Q}: .*'perm'"),
    "centroids_nan": (lambda d: _edit_tensors(d, _nan_centroid), f"layer {Q}: .*NaN"),
    "bias_missing": (lambda d: _edit_tensors(d, lambda t: t.pop(f"{Q}.bias")), "bias=true but"),
    "config_key_missing": (lambda d: _edit_config(d, lambda c: _cfl(c)[Q].pop("group_size")),
                           f"layer {Q}: config is missing keys \\['group_size'\\]"),
    "wrong_features": (lambda d: _edit_config(d, lambda c: _cfl(c)[Q].update(out_features=60)),
                       f"layer {Q}: "),
    "norm_dim_1": (lambda d: _edit_config(d, lambda c: _cfl(c)[Q].update(norm_dim=1)), "norm_dim=1"),
    "unpacked": (lambda d: _edit_config(d, lambda c: _cfl(c)[Q].update(is_indice_packed=False)),
                 "is_indice_packed"),
    "orphan": (lambda d: _edit_config(d, lambda c: _cfl(c).pop(Q)), "not listed in quantization_config"),
    "dense_and_packed": (lambda d: _edit_tensors(d, lambda t: t.update({f"{Q}.weight": np.zeros((64, 64),
                                                                                                np.float16)})),
                         "both packed tensors and a dense"),
    "bin_only": (lambda d: ((d / "model.safetensors").rename(d / "pytorch_model.bin")), "only safetensors"),
}


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_corrupt_checkpoint_raises_value_error(saved: dict[str, Any], tmp_path: Path, kind: str) -> None:
    d = tmp_path / kind
    shutil.copytree(saved["dir"], d)
    corrupt, message = CORRUPTIONS[kind]
    corrupt(d)
    with pytest.raises(ValueError, match=message):
        vio.load_quantized_state(d)


def test_load_errors_for_paths(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a checkpoint directory"):
        vio.load_quantized_state(tmp_path / "nope")
    with pytest.raises(ValueError, match=r"missing config\.json"):
        vio.load_quantized_state(tmp_path)


def test_load_model_errors(saved: dict[str, Any], tmp_path: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    with pytest.raises(ValueError, match="dtype"):
        vio.load_model(saved["dir"], dtype="int8")
    d = tmp_path / "arch"
    shutil.copytree(saved["dir"], d)
    _edit_config(d, lambda c: c.update(model_type="no-such-arch"))
    with pytest.raises(ValueError, match="unsupported or missing model_type 'no-such-arch'"):
        vio.load_model(d)
    d = tmp_path / "shape"
    shutil.copytree(saved["dir"], d)
    _edit_config(d, lambda c: c.update(intermediate_size=96))
    with pytest.raises(ValueError, match="does not match the model's"):
        vio.load_model(d)
    d = tmp_path / "extra"
    shutil.copytree(saved["dir"], d)
    _edit_tensors(d, lambda t: t.update({"model.extra.weight": np.zeros(3, np.float16)}))
    with pytest.raises(ValueError, match="model does not have"):
        vio.load_model(d)
    d = tmp_path / "lacking"
    shutil.copytree(saved["dir"], d)
    _edit_tensors(d, lambda t: t.pop("model.norm.weight"))
    with pytest.raises(ValueError, match=r"lacks tensors \['model.norm.weight'\]"):
        vio.load_model(d)


def test_extra_files_are_part_of_the_atomic_write(saved: dict[str, Any], tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "ck"
    seen: list[list[str]] = []
    real_swap = vio._swap_into_place

    def spy_swap(tmp: Path, dest: Path) -> None:
        seen.append(sorted(p.name for p in tmp.iterdir()))
        real_swap(tmp, dest)

    monkeypatch.setattr(vio, "_swap_into_place", spy_swap)
    vio.save_quantized(out, saved["model"], saved["quantized"], extra_files={"notes.json": '{"a": 1}\n'})
    assert "notes.json" in seen[0]  # already in the temporary directory before the rename
    assert (out / "notes.json").read_text() == '{"a": 1}\n'
    assert "notes.json" in json.loads((out / "vptq_report.json").read_text())["files"]
    for bad in ("../x.json", "config.json", "sub/x.json", ""):
        with pytest.raises(vptq.InputError, match="extra_files"):
            vio.save_quantized(tmp_path / "bad", saved["model"], saved["quantized"], extra_files={bad: "x"})
    with pytest.raises(TypeError, match="extra_files"):
        vio.save_quantized(tmp_path / "bad", saved["model"], saved["quantized"], extra_files={"x.json": b"x"})
    assert not (tmp_path / "bad").exists()
