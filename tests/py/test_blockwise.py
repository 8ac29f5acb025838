"""Block-wise fine-tuning (vptq.models.blockwise, quantize_model(finetune=...)) on tiny LLaMA models:
the block's output error drops, weights in the model equal the returned (fp16-exact) weights, held-out
loss improves, save/reload keeps the model, resume is bit-identical, settings are validated."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")
pytest.importorskip("safetensors")

from tiny_hf import byte_tokenizer, one_thread  # noqa: F401 (one_thread is a fixture)
from vptq import load_model, load_quantized_state, save_quantized
from vptq.config import QuantConfig
from vptq.models import blockwise, pipeline
from vptq.models.blockwise import BlockFinetune, FinetuneStats, block_norm_parameters, finetune_block
from vptq.quant.quantize import QuantizedWeight, quantize_weight

pytestmark = pytest.mark.usefixtures("one_thread")

CFG = QuantConfig(vector_len=4, num_centroids=16, kmeans_iters=5)  # 1 index bit per weight: a large error
FT = BlockFinetune(steps=40, lr=3e-3, scale_lr=3e-4, norm_lr=1e-3)
NORMS = ("input_layernorm.weight", "post_attention_layernorm.weight")


def tiny_llama(seed: int = 0) -> Any:
    cfg = transformers.LlamaConfig(
        hidden_size=32, num_hidden_layers=2, intermediate_size=64, vocab_size=256, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64,
    )
    torch.manual_seed(seed)
    return transformers.AutoModelForCausalLM.from_config(cfg).eval()


def segments(n: int = 8, seq_len: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, seq_len), dtype=np.int64)


def is_fp16(a: Any) -> bool:
    a = a.detach().numpy() if hasattr(a, "detach") else np.asarray(a)
    return bool(np.array_equal(a.astype(np.float16).astype(np.float32), a))


def codebooks(q: QuantizedWeight) -> list[np.ndarray]:
    return [a for a in (q.centroids, q.res_centroids, q.outlier_centroids, q.scale, q.bias) if a is not None]


def norm_values(model: Any) -> dict[str, np.ndarray]:
    return {n: p.detach().numpy().copy() for n, p in model.named_parameters() if "norm" in n}


def quantized_block(seed: int = 0) -> tuple[Any, dict[str, Any], dict[str, QuantizedWeight], list, list]:
    """Block 0 of a tiny LLaMA with its Linears quantized: (block, linears, weights, inputs, targets)."""
    model = tiny_llama(seed)
    block = model.model.layers[0]
    inputs = pipeline._capture_inputs(model, block, segments(), 2)
    linears = pipeline._block_linears(block, "b")
    hooks = pipeline._HessianHooks(linears)
    try:
        targets = hooks.run(block, inputs)
    finally:
        hooks.remove()
    weights = {}
    for name, lin in linears.items():
        weights[name] = quantize_weight(lin.weight.detach().numpy().copy(), hooks.hessian(name), CFG)
        pipeline._set_weight(lin, weights[name].dequantize())
    return block, linears, weights, inputs, targets


def relative_mse(block: Any, inputs: list, targets: list) -> float:
    num = den = 0.0
    with torch.no_grad():
        for (h, kw), (t, _) in zip(inputs, targets, strict=True):
            y = pipeline._output(block(h, **kw)).double()
            num += float(((y - t.double()) ** 2).sum())
            den += float((t.double() ** 2).sum())
    return num / den


# ------------------------------------------------------------------------------------------- finetune_block
def test_finetune_block_lowers_the_output_error_and_writes_back_exact_weights() -> None:
    block, linears, weights, inputs, targets = quantized_block()
    before = dict(weights)
    err0 = relative_mse(block, inputs, targets)
    stats = finetune_block(block, linears, weights, inputs, targets, FT, block_index=0)
    assert isinstance(stats, FinetuneStats)
    assert stats.kept
    assert stats.loss_before == pytest.approx(err0, rel=1e-12)
    assert stats.loss_after == stats.loss_finetuned
    assert stats.loss_after < 0.8 * stats.loss_before
    assert stats.loss_after == pytest.approx(relative_mse(block, inputs, targets), rel=1e-12)
    assert (stats.steps, stats.best_step, stats.train_batches, stats.eval_batches) == (40, 40, 4, 4)
    # 7 layers x (16 codebook entries x 4 + 32 or 64 scales x 2) + 2 norms x 32
    assert stats.parameters == 7 * 16 * 4 + 2 * (6 * 32 + 64) + 2 * 32
    # the modules are the original nn.Linear again, with the fine-tuned weight dequantized exactly
    assert set(pipeline._block_linears(block, "b").values()) == set(linears.values())
    for name, lin in linears.items():
        q = weights[name]
        assert q is not before[name]
        assert q.stats["finetuned"]
        assert q.config == CFG
        np.testing.assert_array_equal(lin.weight.detach().numpy(), q.dequantize())
        np.testing.assert_array_equal(q.indices, before[name].indices)  # indices and perm never change
        np.testing.assert_array_equal(q.perm, before[name].perm)
        assert all(is_fp16(a) for a in codebooks(q))
        assert not np.array_equal(q.centroids, before[name].centroids)
    for p in block_norm_parameters(block).values():
        assert is_fp16(p)
    assert [p.requires_grad for p in block.parameters()] == [True] * len(list(block.parameters()))
    assert set(block_norm_parameters(block)) == set(NORMS)


def test_finetune_block_never_worse() -> None:
    """A divergent learning rate: the block and its weights are left exactly as they were."""
    block, linears, weights, inputs, targets = quantized_block()
    state = copy.deepcopy(block.state_dict())
    before = dict(weights)
    stats = finetune_block(block, linears, weights, inputs, targets, FT.replace(lr=1.0, norm_lr=1.0, steps=5))
    assert not stats.kept
    assert stats.loss_finetuned >= stats.loss_before
    assert stats.loss_after == stats.loss_before
    assert stats.best_step == 0
    assert all(weights[n] is before[n] for n in weights)
    for k, t in block.state_dict().items():
        assert torch.equal(t, state[k]), k


def test_finetune_block_zero_steps_changes_nothing() -> None:
    block, linears, weights, inputs, targets = quantized_block()
    state = copy.deepcopy(block.state_dict())
    stats = finetune_block(block, linears, weights, inputs, targets, FT.replace(steps=0))
    assert (stats.kept, stats.steps, stats.loss_after) == (False, 0, stats.loss_before)
    assert all(torch.equal(t, state[k]) for k, t in block.state_dict().items())


def test_finetune_block_holdout_and_best_step() -> None:
    block, linears, weights, inputs, targets = quantized_block()
    s = FT.replace(val_batches=1, eval_every=10)
    stats = finetune_block(block, linears, weights, inputs, targets, s)
    assert (stats.train_batches, stats.eval_batches) == (3, 1)
    # losses are measured on the held-out batch only
    held = relative_mse(block, inputs[3:], targets[3:])
    assert stats.loss_after == pytest.approx(held, rel=1e-12)
    assert stats.kept
    assert stats.best_step in (10, 20, 30, 40)
    with pytest.raises(ValueError, match="val_batches"):
        finetune_block(block, linears, weights, inputs, targets, FT.replace(val_batches=4))


def test_finetune_block_only_codebooks() -> None:
    block, linears, weights, inputs, targets = quantized_block()
    norms = {n: p.detach().clone() for n, p in block_norm_parameters(block).items()}
    scales = {n: (q.scale.copy(), q.bias.copy()) for n, q in weights.items()}
    stats = finetune_block(block, linears, weights, inputs, targets,
                           FT.replace(train_norms=False, train_scale=False))
    assert stats.kept
    assert stats.parameters == 7 * 16 * 4
    for n, p in block_norm_parameters(block).items():
        assert torch.equal(p, norms[n])
    for n, q in weights.items():
        np.testing.assert_array_equal(q.scale, scales[n][0])
        np.testing.assert_array_equal(q.bias, scales[n][1])


# ------------------------------------------------------------------------------------------- quantize_model
def run(model: Any, finetune: BlockFinetune | None = FT, **kw: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    kw = {"batch_size": 2, **kw}
    return pipeline.quantize_model(model, kw.pop("seg", segments()), CFG, progress=False, finetune=finetune, **kw)


def test_quantize_model_finetune_weights_in_model_and_report() -> None:
    model = tiny_llama()
    q, report = run(model)
    for name, qw in q.items():
        np.testing.assert_array_equal(model.get_submodule(name).weight.detach().numpy(), qw.dequantize())
        assert qw.stats["finetuned"]
        assert all(is_fp16(a) for a in codebooks(qw))
    for block in model.model.layers:
        assert all(is_fp16(p) for p in block_norm_parameters(block).values())
    for r in report:
        ft = r["block_finetune"]
        assert ft["kept"]
        assert ft["loss_after"] < ft["loss_before"]
        assert ft["steps"] == FT.steps
        assert ft["seconds"] > 0
        # the row keeps the quantization's proxy loss; the weight carries the one after fine-tuning
        assert ft["proxy_loss"] == q[r["name"]].proxy_loss != r["proxy_loss"]
        assert ft["relative_proxy_loss"] == pytest.approx(
            r["relative_proxy_loss"] * ft["proxy_loss"] / r["proxy_loss"], rel=1e-12)
    # every row of a block carries the same block statistics
    for b in (0, 1):
        rows = [{k: v for k, v in r["block_finetune"].items() if "proxy" not in k} for r in report if r["block"] == b]
        assert all(x == rows[0] for x in rows)


def test_blocks_without_quantized_layers_are_not_finetuned() -> None:
    model, fp = tiny_llama(), tiny_llama()
    _q, report = pipeline.quantize_model(model, segments(), {"*.layers.1.*": CFG}, progress=False, batch_size=2,
                                        finetune=FT)
    assert {r["block"] for r in report} == {1}
    assert all(r["block_finetune"]["kept"] for r in report)
    for k, t in model.model.layers[0].state_dict().items():  # block 0 is untouched, norms included
        assert torch.equal(t, fp.model.layers[0].state_dict()[k]), k
    assert not torch.equal(model.model.layers[1].input_layernorm.weight, fp.model.layers[1].input_layernorm.weight)


def structured_text(n_sentences: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    subjects = ["the cat", "a dog", "my friend", "the old man", "her sister"]
    verbs = ["sees", "likes", "finds", "paints", "follows"]
    objects = ["the red ball", "a small house", "the river", "an apple", "the garden"]
    return " ".join(f"{subjects[rng.integers(5)]} {verbs[rng.integers(5)]} {objects[rng.integers(5)]}."
                    for _ in range(n_sentences))


def trained_tiny_llama(ids: np.ndarray) -> Any:
    """A tiny LLaMA trained briefly on byte-level sentences, so quantization has something to lose."""
    model = tiny_llama()
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    rng = np.random.default_rng(0)
    for _ in range(150):
        starts = rng.integers(0, len(ids) - 33, size=8)
        x = torch.from_numpy(np.stack([ids[s:s + 32] for s in starts]))
        loss = model(x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def heldout_loss(model: Any, ids: np.ndarray) -> float:
    x = torch.from_numpy(ids[: (len(ids) // 32) * 32].reshape(-1, 32))
    with torch.no_grad():
        return float(model(x, labels=x).loss)


def test_finetune_lowers_heldout_loss() -> None:
    tok = byte_tokenizer()
    train_ids = np.asarray(tok(structured_text(300, 0))["input_ids"], dtype=np.int64)
    held_ids = np.asarray(tok(structured_text(100, 1))["input_ids"], dtype=np.int64)
    fp = trained_tiny_llama(train_ids)
    fp_loss = heldout_loss(fp, held_ids)
    assert fp_loss < 1.5  # it learned the sentences (log 256 = 5.5)
    rng = np.random.default_rng(1)
    calib = np.stack([train_ids[s:s + 32] for s in rng.integers(0, len(train_ids) - 33, size=16)])
    losses = {}
    for label, ft in (("plain", None), ("finetuned", FT.replace(steps=64))):
        model = copy.deepcopy(fp)
        run(model, ft, seg=calib, batch_size=4)
        losses[label] = heldout_loss(model, held_ids)
    assert fp_loss < losses["finetuned"] < losses["plain"]
    # fine-tuning recovers a real part of what quantization lost
    assert losses["plain"] - losses["finetuned"] > 0.2 * (losses["plain"] - fp_loss), losses


def test_save_and_reload_reproduce_the_finetuned_model(tmp_path: Path) -> None:
    model = tiny_llama()
    with torch.no_grad():  # plain tensors exactly representable in the float16 checkpoint
        for p in model.parameters():
            p.copy_(p.half().float())
    q, _ = run(model)
    seg = torch.from_numpy(segments(2, 16, seed=5))
    with torch.no_grad():
        ref = model(seg).logits
    out = save_quantized(tmp_path / "ckpt", model, q)
    _, layers, _ = load_quantized_state(out)
    for name, qw in q.items():  # every stored value is the one in memory
        np.testing.assert_array_equal(layers[name].dequantize(), qw.dequantize())
    loaded, _ = load_model(out)
    for name, v in norm_values(model).items():
        np.testing.assert_array_equal(loaded.get_parameter(name).detach().numpy(), v)
    with torch.no_grad():
        got = loaded(seg).logits
    # same weights; only the kernel's summation order differs from torch's matmul
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_resume_after_interrupt_is_bit_identical(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ref_model = tiny_llama()
    q_ref, r_ref = run(ref_model)

    real = pipeline.finetune_block

    def stop_in_block_1(*a: Any, **kw: Any) -> Any:
        if kw.get("block_index") == 1:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(pipeline, "finetune_block", stop_in_block_1)
    with pytest.raises(KeyboardInterrupt):
        run(tiny_llama(), resume_dir=tmp_path)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["block_0000.npz"]
    with np.load(tmp_path / "block_0000.npz") as z:  # the fine-tuned norm weights are in the resume file
        assert {k for k in z.files if k.startswith("__norms__/")} == {
            f"__norms__/model.layers.0.{n}" for n in NORMS}

    model = tiny_llama()
    q, r = run(model, resume_dir=tmp_path)
    assert list(q) == list(q_ref)
    for name in q:
        for a, b in zip(codebooks(q[name]), codebooks(q_ref[name]), strict=True):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(q[name].dequantize(), q_ref[name].dequantize())
        assert q[name].proxy_loss == q_ref[name].proxy_loss
    for k, t in model.state_dict().items():
        assert torch.equal(t, ref_model.state_dict()[k]), k

    def strip(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{**x, "seconds": 0, "block_finetune": {**x["block_finetune"], "seconds": 0}} for x in rows]

    assert strip(r) == strip(r_ref)

    # other fine-tuning settings (or none) refuse the resume files
    for other in (FT.replace(lr=1e-3), FT.replace(seed=1), None):
        with pytest.raises(ValueError, match="different"):
            run(tiny_llama(), other, resume_dir=tmp_path)
    with pytest.raises(ValueError, match="different"):  # the batches a step sees are part of the setting
        run(tiny_llama(), resume_dir=tmp_path, batch_size=4)


def test_deterministic() -> None:
    runs = []
    for _ in range(2):
        model = tiny_llama()
        q, r = run(model)
        runs.append((q, r, model.state_dict()))
    (q1, r1, s1), (q2, r2, s2) = runs
    for name in q1:
        for a, b in zip(codebooks(q1[name]), codebooks(q2[name]), strict=True):
            np.testing.assert_array_equal(a, b)
    assert all(torch.equal(t, s2[k]) for k, t in s1.items())
    assert [x["block_finetune"]["loss_after"] for x in r1] == [x["block_finetune"]["loss_after"] for x in r2]
    # the seed picks the batch order
    model = tiny_llama()
    q3, _ = run(model, FT.replace(seed=7))
    assert any(not np.array_equal(q3[n].centroids, q1[n].centroids) for n in q1)


# ------------------------------------------------------------------------------------------------ settings
@pytest.mark.parametrize(("field", "value", "error"), [
    ("steps", -1, ValueError), ("steps", 2.0, TypeError), ("steps", True, TypeError),
    ("lr", -1e-3, ValueError), ("lr", float("nan"), ValueError), ("lr", "0.1", TypeError),
    ("scale_lr", 2.0, ValueError), ("norm_lr", None, TypeError),
    ("train_scale", 1, TypeError), ("train_norms", "yes", TypeError),
    ("schedule", "linear", ValueError), ("schedule", 1, TypeError),
    ("val_batches", -1, ValueError), ("eval_every", 0.5, TypeError), ("seed", -1, ValueError),
    ("seed", 2**63, ValueError),
])
def test_bad_settings_name_the_field(field: str, value: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match=rf"BlockFinetune\.{field}\b"):
        BlockFinetune(**{field: value})


def test_settings_round_trip_and_defaults() -> None:
    s = BlockFinetune(steps=3, lr=1e-2, schedule="constant", seed=4)
    assert BlockFinetune.from_dict(s.to_dict()) == s
    assert BlockFinetune.from_dict({}) == BlockFinetune()
    assert s.replace(steps=5).steps == 5
    with pytest.raises(ValueError, match="unknown keys"):
        BlockFinetune.from_dict({"stepz": 3})
    with pytest.raises(ValueError, match=r"BlockFinetune\.steps"):
        s.replace(steps=-2)


def test_quantize_model_bad_finetune_arguments() -> None:
    with pytest.raises(TypeError, match="finetune"):
        run(tiny_llama(), {"steps": 3})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs method 'vptq'"):
        pipeline.quantize_model(tiny_llama(), segments(), None, method="rtn", progress=False, finetune=FT)
    with pytest.raises(ValueError, match="float32"):
        run(tiny_llama().to(torch.bfloat16))
    with pytest.raises(ValueError, match="val_batches"):
        run(tiny_llama(), FT.replace(val_batches=4))  # 8 segments in batches of 2
    block, linears, weights, inputs, targets = quantized_block()
    with pytest.raises(TypeError, match="settings"):
        finetune_block(block, linears, weights, inputs, targets, {"steps": 1})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="same non-zero number"):
        finetune_block(block, linears, weights, inputs, targets[:1], FT)
    with pytest.raises(ValueError, match="not a Linear module of this block"):
        finetune_block(block, {}, weights, inputs, targets, FT)
    assert blockwise.SCHEDULES == ("constant", "cosine")
