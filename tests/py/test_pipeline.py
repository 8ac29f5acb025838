"""Whole-model block-sequential quantization on a tiny random LLaMA: coverage, weights in place,
VPTQ vs RTN, resume, config patterns, CLI quantize/info/eval end to end, bad inputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")
pytest.importorskip("safetensors")

from tiny_hf import byte_tokenizer, one_thread  # noqa: F401 (one_thread is a fixture)
from vptq.cli.main import main
from vptq.config import QuantConfig
from vptq.models import pipeline
from vptq.quant.quantize import QuantizedWeight

CFG = QuantConfig(vector_len=4, num_centroids=16, kmeans_iters=5)
LEAVES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
TEXT = ("The quick brown fox jumps over the lazy dog. " * 3 + "Pack my box with five dozen liquor jugs. ") * 20


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_llama(seed: int = 0) -> Any:
    cfg = transformers.LlamaConfig(
        hidden_size=32, num_hidden_layers=2, intermediate_size=64, vocab_size=256, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64,
    )
    torch.manual_seed(seed)
    return transformers.AutoModelForCausalLM.from_config(cfg).eval()


def segments(n: int = 4, seq_len: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, seq_len), dtype=np.int64)


def linear_names(model: Any) -> set[str]:
    return {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in n}


@pytest.mark.parametrize("sequential", [True, False])
def test_quantizes_every_decoder_linear_and_sets_weights(sequential: bool) -> None:
    model = tiny_llama()
    lm_head = model.lm_head.weight.detach().clone()
    q, report = pipeline.quantize_model(model, segments(), CFG, sequential=sequential, progress=False)
    assert set(q) == linear_names(model)
    assert len(q) == 2 * len(LEAVES)
    assert [r["name"] for r in report] == list(q)
    for r in report:
        assert set(r) >= {"name", "shape", "method", "bits_per_weight", "proxy_loss", "relative_proxy_loss",
                          "seconds", "block"}
        assert r["method"] == "vptq"
        assert r["proxy_loss"] >= 0
        assert 0 <= r["relative_proxy_loss"] < 1
        assert r["bits_per_weight"] == pytest.approx(q[r["name"]].bits_per_weight)
        assert r["block"] == int(r["name"].split(".")[2])
    for name, qw in q.items():
        assert isinstance(qw, QuantizedWeight)
        np.testing.assert_array_equal(model.get_submodule(name).weight.detach().numpy(), qw.dequantize())
    assert torch.equal(model.lm_head.weight, lm_head)


def test_sequential_changes_block1_calibration_only() -> None:
    seg = segments()
    _qs, rs = pipeline.quantize_model(tiny_llama(), seg, CFG, sequential=True, progress=False)
    _qn, rn = pipeline.quantize_model(tiny_llama(), seg, CFG, sequential=False, progress=False)
    for a, b in zip(rs, rn, strict=True):
        if a["block"] == 0:
            assert a["proxy_loss"] == b["proxy_loss"]
    assert any(a["proxy_loss"] != b["proxy_loss"] for a, b in zip(rs, rn, strict=True) if a["block"] == 1)


def test_vptq_beats_rtn_and_baselines_report() -> None:
    seg = segments()
    cfg = QuantConfig(vector_len=2, num_centroids=16, kmeans_iters=10)  # 2 index bits per weight
    qv, rv = pipeline.quantize_model(tiny_llama(), seg, cfg, progress=False, sequential=False)
    for method in ("rtn", "gptq"):
        model = tiny_llama()
        qb, rb = pipeline.quantize_model(model, seg, None, method=method, bits=2, group_size=32,
                                         sequential=False, progress=False)
        assert set(qb) == set(qv)
        for r in rb:
            assert r["method"] == method
            assert r["proxy_loss"] > 0
            assert r["relative_proxy_loss"] > 0
            np.testing.assert_array_equal(model.get_submodule(r["name"]).weight.detach().numpy(),
                                          qb[r["name"]].dequantize())
        if method == "rtn":
            # non-sequential: block-0 Hessians are identical, so proxy losses are comparable
            by = {r["name"]: r for r in rb}
            for r in rv:
                if r["block"] == 0:
                    assert r["proxy_loss"] < by[r["name"]]["proxy_loss"], r["name"]


def test_resume_after_interrupt_matches_uninterrupted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seg = segments()
    ref_model = tiny_llama()
    q_ref, r_ref = pipeline.quantize_model(ref_model, seg, CFG, progress=False)

    real = pipeline._save_block
    calls = []

    def save_then_stop(path: Path, *a: Any) -> None:
        real(path, *a)
        calls.append(path)
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "_save_block", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        pipeline.quantize_model(tiny_llama(), seg, CFG, progress=False, resume_dir=tmp_path)
    monkeypatch.undo()
    assert [p.name for p in calls] == ["block_0000.npz"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["block_0000.npz"]

    model = tiny_llama()
    q, r = pipeline.quantize_model(model, seg, CFG, progress=False, resume_dir=tmp_path)
    assert set(q) == set(q_ref)
    for name in q:
        np.testing.assert_array_equal(q[name].dequantize(), q_ref[name].dequantize())
        np.testing.assert_array_equal(model.get_submodule(name).weight.detach().numpy(),
                                      ref_model.get_submodule(name).weight.detach().numpy())
    assert [x["name"] for x in r] == [x["name"] for x in r_ref]
    assert [x["proxy_loss"] for x in r] == [x["proxy_loss"] for x in r_ref]

    # a different setting refuses the stale resume files
    with pytest.raises(ValueError, match="different"):
        pipeline.quantize_model(tiny_llama(), seg, CFG.replace(seed=1), progress=False, resume_dir=tmp_path)


def test_resume_scalar_baseline(tmp_path: Path) -> None:
    seg = segments()
    q1, r1 = pipeline.quantize_model(tiny_llama(), seg, None, method="gptq", group_size=16, progress=False,
                                     resume_dir=tmp_path)
    q2, r2 = pipeline.quantize_model(tiny_llama(), seg, None, method="gptq", group_size=16, progress=False,
                                     resume_dir=tmp_path)
    assert r1 == r2
    for name in q1:
        np.testing.assert_array_equal(q1[name].dequantize(), q2[name].dequantize())


def test_config_patterns_first_match_wins() -> None:
    model = tiny_llama()
    other = QuantConfig(vector_len=8, num_centroids=16, kmeans_iters=3)
    config = {"*.layers.0.self_attn.q_proj": other, "*.self_attn.*": CFG, "*.layers.1.mlp.*": "v4-k16-0"}
    q, report = pipeline.quantize_model(model, segments(), config, progress=False)
    expected = {n for n in linear_names(model) if ".self_attn." in n or ".layers.1.mlp." in n}
    assert set(q) == expected
    assert q["model.layers.0.self_attn.q_proj"].layout["v"] == 8
    assert q["model.layers.1.self_attn.q_proj"].layout["v"] == 4
    assert q["model.layers.1.mlp.up_proj"].layout["k1"] == 16
    fp = tiny_llama()  # unmatched layers keep their weights
    assert torch.equal(model.model.layers[0].mlp.up_proj.weight, fp.model.layers[0].mlp.up_proj.weight)
    assert {r["name"] for r in report} == expected


def test_tokenizer_and_calib_text() -> None:
    q, _ = pipeline.quantize_model(tiny_llama(), byte_tokenizer(), CFG, calib_text=TEXT, n_segments=2,
                                   seq_len=16, progress=False)
    assert len(q) == 14


def test_bad_inputs() -> None:
    model = tiny_llama()
    seg = segments()
    with pytest.raises(ValueError, match="method"):
        pipeline.quantize_model(model, seg, CFG, method="awq", progress=False)
    with pytest.raises(ValueError, match="unknown preset"):
        pipeline.quantize_model(model, seg, "nope", progress=False)
    with pytest.raises(ValueError, match="no decoder Linear"):
        pipeline.quantize_model(model, seg, {"lm_head": CFG}, progress=False)
    with pytest.raises(ValueError, match="segments"):
        pipeline.quantize_model(model, np.zeros((3,), dtype=np.int64), CFG, progress=False)
    with pytest.raises(ValueError, match="bits"):
        pipeline.quantize_model(model, seg, None, method="rtn", bits=9, progress=False)
    with pytest.raises(ValueError, match="needs"):
        pipeline.quantize_model(model, seg, None, progress=False)
    with pytest.raises(TypeError, match="config"):
        pipeline.quantize_model(model, seg, 3, progress=False)  # type: ignore[arg-type]
    # a config that does not fit a layer names the layer: vector_len 16 > 32 rows is fine, use groups
    bad = QuantConfig(vector_len=4, num_centroids=16, group_num=1000, kmeans_iters=2)
    with pytest.raises(ValueError, match=r"layer model\.layers\.0"):
        pipeline.quantize_model(model, seg, bad, progress=False)
    with pytest.raises(ValueError, match="architecture"):
        pipeline.quantize_model(torch.nn.Linear(3, 3), seg, CFG, progress=False)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("hf") / "tiny"
    tiny_llama().save_pretrained(d)
    byte_tokenizer().save_pretrained(d)
    return d


def test_cli_quantize_info_eval(hf_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = tmp_path / "calib.txt"
    text.write_text(TEXT)
    out = tmp_path / "q"
    assert main(["quantize", str(hf_dir), "--config", "v4-k16-0", "--calib", str(text), "--out", str(out),
                 "--segments", "2", "--seq-len", "16", "--kmeans-iters", "3", "--no-progress"]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["quantization_config"]["quant_method"] == "vptq"
    assert len(cfg["quantization_config"]["config_for_layers"]) == 14
    rows = json.loads((out / "quantize_report.json").read_text())["layers"]
    assert len(rows) == 14
    capsys.readouterr()

    assert main(["info", str(out)]) == 0
    info = capsys.readouterr().out
    assert "model.layers.1.mlp.down_proj" in info
    assert "total" in info

    assert main(["eval", str(out), "--text", str(text), "--seq-len", "32", "--max-windows", "2"]) == 0
    q_line = capsys.readouterr().out
    assert "ppl" in q_line
    assert main(["eval", str(hf_dir), "--text", str(text), "--seq-len", "32", "--max-windows", "2"]) == 0
    assert "ppl" in capsys.readouterr().out

    # baseline: fake-quantized model + report, evaluable
    out_b = tmp_path / "rtn"
    assert main(["quantize", str(hf_dir), "--method", "rtn", "--calib", str(text), "--out", str(out_b),
                 "--segments", "2", "--seq-len", "16", "--group-size", "16", "--no-progress"]) == 0
    assert (out_b / "quantize_report.json").is_file()
    assert main(["eval", str(out_b), "--text", str(text), "--seq-len", "32", "--max-windows", "2"]) == 0


def test_cli_user_errors(hf_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = tmp_path / "calib.txt"
    text.write_text(TEXT)
    cases = [
        ["quantize", str(tmp_path / "missing"), "--calib", str(text), "--out", str(tmp_path / "o1")],
        ["quantize", str(hf_dir), "--calib", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "o2")],
        ["quantize", str(hf_dir), "--config", "bogus", "--calib", str(text), "--out", str(tmp_path / "o3")],
        ["quantize", str(hf_dir), "--calib", str(text), "--out", str(hf_dir)],  # exists
        ["info", str(hf_dir)],  # not a VPTQ checkpoint
        ["info", str(tmp_path / "missing")],
        ["eval", str(tmp_path / "missing"), "--text", str(text)],
    ]
    for argv in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith(f"vptq {argv[0]}: error:")
        assert "Traceback" not in err


def test_shared_inputs_share_one_hessian() -> None:
    model = tiny_llama()
    block = model.model.layers[0]
    linears = pipeline._block_linears(block, "b")
    captured = pipeline._capture_inputs(model, block, segments(), 2)
    hooks = pipeline._HessianHooks(linears)
    try:
        hooks.run(block, captured)
    finally:
        hooks.remove()
    assert hooks.owner == {"b.self_attn.q_proj": "b.self_attn.q_proj", "b.self_attn.k_proj": "b.self_attn.q_proj",
                           "b.self_attn.v_proj": "b.self_attn.q_proj", "b.self_attn.o_proj": "b.self_attn.o_proj",
                           "b.mlp.gate_proj": "b.mlp.gate_proj", "b.mlp.up_proj": "b.mlp.gate_proj",
                           "b.mlp.down_proj": "b.mlp.down_proj"}
    # the shared Hessian is E[x xᵀ] of the attention input (post-norm hidden states), 4·16 rows
    H = hooks.hessian("b.self_attn.v_proj")
    assert H.count == 64
    with torch.no_grad():
        x = torch.cat([block.input_layernorm(h) for h, _ in captured]).reshape(-1, 32).double()
    np.testing.assert_allclose(H.matrix, (x.T @ x / 64).numpy(), rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="not called"):
        hooks.hessian("b.nope")


def test_resume_refuses_other_weights(tmp_path: Path) -> None:
    seg = segments()
    pipeline.quantize_model(tiny_llama(), seg, None, method="rtn", progress=False, resume_dir=tmp_path)
    with pytest.raises(ValueError, match="different"):
        pipeline.quantize_model(tiny_llama(seed=1), seg, None, method="rtn", progress=False, resume_dir=tmp_path)


def test_progress_bar(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("tqdm")
    q, _ = pipeline.quantize_model(tiny_llama(), segments(), None, method="rtn", group_size=16, progress=True)
    assert len(q) == 14
    err = capsys.readouterr().err
    assert "rtn quantize" in err
    assert "14/14" in err


def test_block_by_block_reproduces_the_model() -> None:
    """The captured block-0 inputs run through every block give the model's own logits."""
    model = tiny_llama()
    seg = segments()
    inputs = pipeline._capture_inputs(model, model.model.layers[0], seg, 3)
    assert [h.shape[0] for h, _ in inputs] == [3, 1]
    for block in model.model.layers:
        inputs = pipeline._run_block(block, inputs)
    with torch.no_grad():
        logits = torch.cat([model.lm_head(model.model.norm(h)) for h, _ in inputs])
        ref = model(torch.from_numpy(seg)).logits
    torch.testing.assert_close(logits, ref, rtol=1e-5, atol=1e-5)
