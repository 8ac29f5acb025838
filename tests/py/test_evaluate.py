"""Perplexity (GPTQ protocol) and decode speed against straightforward manual computations."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from tiny_hf import byte_tokenizer, one_thread  # noqa: F401 (one_thread is a fixture)
from vptq.config import QuantConfig
from vptq.models.calib import default_text
from vptq.models.evaluate import DecodeSpeed, PerplexityResult, decode_speed, perplexity, tokenize
from vptq.quant.quantize import quantize_weight

TEXT = default_text()[:2000]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    """A 256-token byte-level tokenizer (no download)."""
    return byte_tokenizer()


@pytest.fixture(scope="module")
def model() -> Any:
    cfg = transformers.LlamaConfig(
        hidden_size=64, num_hidden_layers=2, intermediate_size=128, vocab_size=256, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(cfg).eval()


def manual_ppl(model: Any, ids: list[int], seq_len: int, windows: int) -> tuple[float, int]:
    """exp(mean NLL) over non-overlapping windows, one window at a time, in float64."""
    total, count = 0.0, 0
    with torch.no_grad():
        for w in range(windows):
            x = torch.tensor(ids[w * seq_len: (w + 1) * seq_len])[None]
            logits = model(x).logits[0].double().numpy()
            logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
                - logits.max(-1, keepdims=True)
            targets = x[0, 1:].numpy()
            total -= float(logp[np.arange(seq_len - 1), targets].sum())
            count += seq_len - 1
    return math.exp(total / count), count


def test_perplexity_matches_manual(model: Any, tokenizer: Any) -> None:
    ids = tokenizer(TEXT)["input_ids"]
    seq_len = 64
    windows = len(ids) // seq_len
    want, count = manual_ppl(model, ids, seq_len, windows)
    r = perplexity(model, tokenizer, TEXT, seq_len=seq_len)
    assert isinstance(r, PerplexityResult)
    assert r.windows == windows
    assert r.seq_len == seq_len
    assert r.tokens == count == windows * (seq_len - 1)
    assert r.ppl == pytest.approx(want, rel=1e-5)
    assert r.nll == pytest.approx(math.log(want), rel=1e-5)
    assert r.seconds > 0
    assert r.tokens_per_second > 0
    assert r.to_dict()["ppl"] == r.ppl
    # a random 256-token model is close to uniform
    assert 100 < r.ppl < 1000


def test_perplexity_batching_limits_and_token_ids(model: Any, tokenizer: Any) -> None:
    ids = tokenizer(TEXT)["input_ids"]
    base = perplexity(model, tokenizer, TEXT, seq_len=48)
    batched = perplexity(model, tokenizer, TEXT, seq_len=48, batch_size=4)
    assert batched.tokens == base.tokens
    assert batched.ppl == pytest.approx(base.ppl, rel=1e-5)
    from_ids = perplexity(model, None, np.array(ids), seq_len=48)
    assert from_ids.ppl == pytest.approx(base.ppl, rel=1e-12)
    limited = perplexity(model, tokenizer, TEXT, seq_len=48, max_windows=2)
    want, count = manual_ppl(model, ids, 48, 2)
    assert limited.windows == 2
    assert limited.tokens == count
    assert limited.ppl == pytest.approx(want, rel=1e-5)
    # exactly one window
    one = perplexity(model, None, ids[:48], seq_len=48)
    assert one.windows == 1


def test_perplexity_restores_training_mode(model: Any, tokenizer: Any) -> None:
    model.train()
    try:
        r = perplexity(model, tokenizer, TEXT, seq_len=64, max_windows=1)
        assert model.training
        model.eval()
        assert perplexity(model, tokenizer, TEXT, seq_len=64, max_windows=1).ppl == r.ppl
    finally:
        model.eval()


@pytest.mark.parametrize(
    ("kwargs", "exc", "message"),
    [
        ({"text": ""}, ValueError, "empty"),
        ({"text": "  \n "}, ValueError, "empty"),
        ({"seq_len": 1}, ValueError, "seq_len"),
        ({"seq_len": 8.0}, TypeError, "seq_len"),
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"max_windows": 0}, ValueError, "max_windows"),
        ({"seq_len": 100_000}, ValueError, "fewer than seq_len"),
        ({"text": [[1, 2], [3, 4]]}, ValueError, "1-D integer"),
        ({"text": [0.5, 1.5]}, ValueError, "1-D integer"),
        ({"text": []}, ValueError, "at least one token"),
        ({"tokenizer": None}, ValueError, "tokenizer"),
    ],
)
def test_perplexity_bad_input(model: Any, tokenizer: Any, kwargs: dict[str, Any], exc: type[Exception],
                              message: str) -> None:
    args: dict[str, Any] = {"tokenizer": tokenizer, "text": TEXT, "seq_len": 64, **kwargs}
    with pytest.raises(exc, match=message):
        perplexity(model, **args)


def test_tokenize_accepts_tensor_and_batch_of_one(tokenizer: Any) -> None:
    ids = tokenize(tokenizer, "abc")
    assert ids.dtype == np.int64
    np.testing.assert_array_equal(tokenize(None, torch.tensor([ids.tolist()])), ids)


def test_decode_speed_greedy(model: Any, tokenizer: Any) -> None:
    prompt = "The quick brown fox"
    r = decode_speed(model, tokenizer, prompt, new_tokens=6)
    assert isinstance(r, DecodeSpeed)
    ids = tokenizer(prompt)["input_ids"]
    assert r.prompt_tokens == len(ids)
    assert r.new_tokens == 6
    # reference: greedy argmax with full recomputation, no cache
    seq = list(ids)
    with torch.no_grad():
        for _ in range(6):
            seq.append(int(model(torch.tensor([seq])).logits[0, -1].argmax()))
    assert r.output_ids == seq[len(ids):]
    assert r.text == tokenizer.decode(r.output_ids)
    for v in (r.prefill_seconds, r.decode_seconds, r.prefill_tokens_per_second, r.decode_tokens_per_second):
        assert v > 0
        assert math.isfinite(v)
    with pytest.raises(ValueError, match="new_tokens"):
        decode_speed(model, tokenizer, prompt, new_tokens=1)
    with pytest.raises(ValueError, match="empty"):
        decode_speed(model, tokenizer, "", new_tokens=4)


def test_quantized_model_perplexity(model: Any, tokenizer: Any, tmp_path: Path) -> None:
    """A saved and reloaded VPTQ model scores like its dequantized dense equivalent."""
    from vptq.formats.checkpoint import load_model, save_quantized

    rng = np.random.default_rng(0)
    cfg = QuantConfig(vector_len=4, num_centroids=16, num_res_centroids=8, kmeans_iters=5)
    quantized = {}
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and ".layers." in name:
            X = rng.standard_normal((128, mod.in_features))
            quantized[name] = quantize_weight(mod.weight.detach().numpy(), X.T @ X / 128, cfg)
    save_quantized(tmp_path / "q", model, quantized, tokenizer=tokenizer, dtype="float32")
    qmodel, qtok = load_model(tmp_path / "q")
    ref = transformers.AutoModelForCausalLM.from_config(model.config).eval()
    ref.load_state_dict(model.state_dict())
    with torch.no_grad():
        for name, qw in quantized.items():
            ref.get_submodule(name).weight.copy_(torch.from_numpy(qw.dequantize()))
    got = perplexity(qmodel, qtok, TEXT, seq_len=64, max_windows=4)
    want = perplexity(ref, tokenizer, TEXT, seq_len=64, max_windows=4)
    fp = perplexity(model, tokenizer, TEXT, seq_len=64, max_windows=4)
    assert got.tokens == want.tokens
    assert got.ppl == pytest.approx(want.ppl, rel=1e-4)
    assert got.ppl != fp.ppl
    speed = decode_speed(qmodel, qtok, "Hello", new_tokens=3)
    assert speed.new_tokens == 3
