"""End-to-end distillation (vptq.models.distill) on tiny random LLaMAs: it lowers the held-out KL,
trains exactly what it should, is deterministic, both teacher modes agree, the LR schedule, the
custom backward, the official-format round trip of both student forms, and bad input."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")
pytest.importorskip("safetensors")

import itertools

import vptq
from tiny_hf import one_thread  # noqa: F401 (one_thread is a fixture)
from vptq import QuantConfig, QuantizedWeight
from vptq.models import distill as D
from vptq.models.distill import Distill, DistillReport, distill_model, lr_factor
from vptq.runtime.torch import QuantizedLinear
from vptq.runtime.trainable import TrainableQuantizedLinear

pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB = 96
CFG = QuantConfig(vector_len=4, num_centroids=8, kmeans_iters=5)
FAST = Distill(steps=12, lr=1e-2, norm_lr=1e-2, batch_size=4, warmup_steps=2, teacher="on-the-fly", kl_chunk=40)


def tiny_llama(seed: int = 0, tie: bool = False) -> Any:
    """A random 2-block LLaMA whose next-token distributions are far from uniform (large init)."""
    cfg = transformers.LlamaConfig(
        hidden_size=32, num_hidden_layers=2, intermediate_size=64, vocab_size=VOCAB, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=tie, initializer_range=0.3,
    )
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
            # every plain tensor exactly representable in float16, so a float16 checkpoint stores the
            # in-memory model losslessly and the round trips below can compare bit for bit
            p.copy_(p.half().float())
    return model


def segments(n: int = 16, seq_len: int = 24, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, size=(n, seq_len), dtype=np.int64)


def sampled(model: Any, n: int, seq_len: int, seed: int) -> np.ndarray:
    """[n, seq_len] token ids sampled from ``model`` (text the teacher finds likely)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (n, 1), generator=g)
    with torch.no_grad():
        for _ in range(seq_len - 1):
            p = torch.softmax(model(ids).logits[:, -1], -1)
            ids = torch.cat([ids, torch.multinomial(p, 1, generator=g)], 1)
    return ids.numpy()


def pair(seed: int = 0, tie: bool = False) -> tuple[Any, Any, dict[str, QuantizedWeight]]:
    """(teacher, student as quantize_model leaves it, its quantized mapping)."""
    teacher = tiny_llama(seed, tie)
    student = copy.deepcopy(teacher)
    quantized, _ = vptq.quantize_model(student, segments(8, 24, seed=seed + 1), CFG, progress=False)
    return teacher, student, quantized


def heldout_kl(teacher: Any, student: Any, ids: np.ndarray) -> float:
    """Mean KL(teacher ‖ student) per token on held-out ids."""
    x = torch.from_numpy(ids)
    with torch.no_grad():
        t = torch.log_softmax(teacher(x).logits, -1)
        s = torch.log_softmax(student(x).logits, -1)
    return float((t.exp() * (t - s)).sum(-1).mean())


def state(model: Any) -> dict[str, Any]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_weight(a: QuantizedWeight, b: QuantizedWeight) -> None:
    for key in ("centroids", "indices", "res_centroids", "res_indices", "outlier_centroids", "outlier_indices",
                "perm", "scale", "bias"):
        x, y = getattr(a, key), getattr(b, key)
        assert (x is None) == (y is None), key
        if x is not None:
            assert np.array_equal(np.asarray(x), np.asarray(y)), key


def f16_exact(t: Any) -> bool:
    t = torch.as_tensor(t)
    return bool(torch.equal(t.half().float(), t.float()))


# ------------------------------------------------------------------------------------ settings
def test_settings_defaults_dict_round_trip() -> None:
    s = Distill()
    assert s.teacher in D.TEACHER_MODES
    assert s.schedule in D.SCHEDULES
    assert not s.train_embeddings
    assert not s.train_lm_head
    d = s.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert Distill.from_dict(d) == s
    assert Distill.from_dict({"steps": 3}) == Distill(steps=3)
    assert s.replace(lr=0.5).lr == 0.5
    assert s.replace(lr=0.5).steps == s.steps
    assert Distill(batch_size=3, grad_accum=2).segments_per_step == 6


@pytest.mark.parametrize(("field", "value", "error"), [
    ("steps", 1.5, TypeError), ("steps", -1, ValueError), ("steps", True, TypeError),
    ("lr", "1e-3", TypeError), ("lr", 0.0, ValueError), ("lr", float("nan"), ValueError),
    ("norm_lr", -1e-3, ValueError), ("embed_lr", float("inf"), ValueError),
    ("batch_size", 0, ValueError), ("grad_accum", 0, ValueError), ("grad_accum", 2.0, TypeError),
    ("schedule", "linear", ValueError), ("schedule", None, TypeError),
    ("warmup_steps", -1, ValueError), ("train_embeddings", 1, TypeError), ("train_lm_head", "yes", TypeError),
    ("teacher", "cached", ValueError), ("topk", 0, ValueError), ("kl_chunk", 0, ValueError),
    ("seed", -1, ValueError), ("seed", "0", TypeError),
])
def test_bad_settings_name_the_field(field: str, value: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match=rf"Distill\.{field}"):
        Distill(**{field: value})


def test_bad_settings_dicts() -> None:
    with pytest.raises(ValueError, match=r"unknown keys.*momentum"):
        Distill.from_dict({"steps": 3, "momentum": 0.9})
    with pytest.raises(TypeError, match="mapping"):
        Distill.from_dict([("steps", 3)])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="unknown fields"):
        Distill().replace(stpes=3)
    with pytest.raises(ValueError, match=r"Distill\.lr"):
        Distill().replace(lr=-1.0)


def test_lr_schedule_warmup_then_cosine() -> None:
    s = Distill(steps=10, warmup_steps=3, schedule="cosine")
    got = [lr_factor(s, i) for i in range(10)]
    want = [1 / 4, 2 / 4, 3 / 4] + [0.5 * (1 + math.cos(math.pi * j / 7)) for j in range(7)]
    assert got == pytest.approx(want, rel=1e-12, abs=0)
    assert got[3] == 1.0
    assert all(a > b for a, b in itertools.pairwise(got[3:]))
    assert got[-1] > 0
    c = s.replace(schedule="constant")
    assert [lr_factor(c, i) for i in range(10)] == pytest.approx([1 / 4, 2 / 4, 3 / 4] + [1.0] * 7)
    assert [lr_factor(s.replace(warmup_steps=0), i) for i in (0, 5)] == pytest.approx([1.0, 0.5])
    assert lr_factor(Distill(steps=4, warmup_steps=10), 3) == pytest.approx(4 / 11)  # still warming up
    with pytest.raises(ValueError, match="step"):
        lr_factor(s, -1)
    with pytest.raises(TypeError, match="step"):
        lr_factor(s, 1.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="settings"):
        lr_factor({"steps": 3}, 0)  # type: ignore[arg-type]


def test_report_records_the_schedule_it_used() -> None:
    teacher, student, q = pair()
    s = FAST.replace(steps=6, warmup_steps=2)
    r = distill_model(student, teacher, segments(), s, quantized=q, progress=False)
    assert r.lrs == [lr_factor(s, i) for i in range(6)]
    assert len(r.losses) == 6
    assert all(math.isfinite(x) and x > 0 for x in r.losses)


# ---------------------------------------------------------------------------------- the layer
def _layer_cases() -> dict[str, tuple[int, int, QuantConfig]]:
    small = {"vector_len": 4, "num_centroids": 16, "kmeans_iters": 3}
    out = {"outlier_percent": 10.0, "outlier_vector_len": 4, "outlier_centroids": 8}
    return {
        "residual-v6": (40, 32, QuantConfig(**{**small, "vector_len": 6, "num_res_centroids": 8})),
        "outliers-groups": (36, 42, QuantConfig(**{**small, "vector_len": 8, "num_res_centroids": 4,
                                                    "group_num": 2, **out})),
        "no-norm-no-perm": (28, 24, QuantConfig(**{**small, "enable_norm": False, "enable_perm": False,
                                                    "group_num": 2})),
    }


@pytest.mark.parametrize("case", sorted(_layer_cases()))
def test_training_layer_matches_trainable_forward_and_gradients(case: str) -> None:
    M, N, cfg = _layer_cases()[case]
    rng = np.random.default_rng(0)
    W = (0.02 * rng.standard_normal((M, N)) * (0.5 + rng.random(N))).astype(np.float32)
    X = rng.standard_normal((4 * N, N)) * rng.uniform(0.2, 2.0, N)
    qw = vptq.quantize_weight(W, X.T @ X / len(X), cfg)
    bias = rng.standard_normal(M).astype(np.float32)
    ref, fast = TrainableQuantizedLinear(qw, bias), D._DistillLinear(qw, bias)
    W_fast, _ = D._rebuild(fast)
    assert torch.equal(W_fast, ref.dequantize())  # the backward's rebuild is the forward's Ŵ
    x = torch.randn(3, 5, N, generator=torch.Generator().manual_seed(1))
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ya, yb = ref(xa), fast(xb)
    assert torch.equal(ya, yb)
    g = torch.randn_like(ya)
    ya.backward(g)
    yb.backward(g)
    torch.testing.assert_close(xb.grad, xa.grad, rtol=1e-6, atol=1e-7)
    for (name, pa), (_, pb) in zip(ref.named_parameters(), fast.named_parameters(), strict=True):
        torch.testing.assert_close(pb.grad, pa.grad, rtol=1e-5, atol=1e-7, msg=name)
    f64 = D._DistillLinear(qw, bias, dtype=torch.float64)
    x64 = torch.randn(2, N, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(f64, (x64,))
    with torch.no_grad():  # no autograd: exactly the parent's path
        assert torch.equal(fast(x), ref(x))


# --------------------------------------------------------------------------- teacher / KL
def test_kl_topk_over_the_whole_vocabulary_is_the_exact_kl() -> None:
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(50, VOCAB, generator=g) * 3, torch.randn(50, VOCAB, generator=g) * 3
    exact = D._kl_full(s, t)
    t_logp = torch.log_softmax(t, -1)
    full_idx = torch.arange(VOCAB).expand(50, VOCAB)
    torch.testing.assert_close(D._kl_topk(s, t_logp, full_idx, None), exact, rtol=1e-5, atol=1e-6)
    # top-k + tail bucket: the KL of the coarsened distributions, a lower bound, tighter as k grows
    values = []
    for k in (1, 8, 32, VOCAB - 1):
        top, idx = t_logp.topk(k, -1)
        tail = torch.logsumexp(t_logp.scatter(-1, idx, float("-inf")), -1)
        values.append(float(D._kl_topk(s, top, idx, tail)))
    assert all(0 <= v <= float(exact) + 1e-4 for v in values)
    assert values == sorted(values)
    assert values[-1] == pytest.approx(float(exact), rel=1e-5)


def test_teacher_modes_agree_with_full_topk() -> None:
    teacher, student, q = pair()
    runs = {}
    for mode in ("on-the-fly", "topk"):
        s = copy.deepcopy(student)
        runs[mode] = distill_model(s, teacher, segments(), FAST.replace(steps=4, teacher=mode, topk=VOCAB),
                                   quantized=q, progress=False)
    a, b = runs["on-the-fly"], runs["topk"]
    assert a.losses[0] == pytest.approx(b.losses[0], rel=1e-6)  # same weights: the same loss
    assert a.losses == pytest.approx(b.losses, rel=1e-4)
    assert b.teacher_seconds > 0
    assert a.teacher_seconds == 0
    for name in q:
        np.testing.assert_allclose(b.quantized[name].centroids, a.quantized[name].centroids, rtol=2e-3, atol=1e-3)


def test_topk_mode_distils_too() -> None:
    teacher, student, q = pair()
    held = segments(8, 24, seed=9)
    before = heldout_kl(teacher, student, held)
    r = distill_model(student, teacher, segments(), FAST.replace(steps=30, teacher="topk", topk=8), quantized=q,
                      progress=False)
    assert heldout_kl(teacher, student, held) < 0.8 * before
    assert r.losses[-1] < r.losses[0]


def test_chunking_changes_only_rounding() -> None:
    teacher, student, q = pair()
    a = distill_model(copy.deepcopy(student), teacher, segments(), FAST.replace(steps=3, kl_chunk=7), quantized=q,
                      progress=False)
    b = distill_model(copy.deepcopy(student), teacher, segments(), FAST.replace(steps=3, kl_chunk=10_000),
                      quantized=q, progress=False)
    assert a.losses == pytest.approx(b.losses, rel=1e-5)


# ------------------------------------------------------------------------------ distillation
def test_distillation_lowers_heldout_kl_and_keeps_the_student_form() -> None:
    teacher, student, q = pair()
    held = sampled(teacher, 8, 24, seed=9)  # held-out text the teacher finds likely
    kl_before = heldout_kl(teacher, student, held)
    emb = student.get_input_embeddings().weight.detach().clone()
    head = student.get_output_embeddings().weight.detach().clone()
    linears = {n: student.get_submodule(n) for n in q}
    r = distill_model(student, teacher, sampled(teacher, 16, 24, seed=1), FAST.replace(steps=40, lr=3e-2, norm_lr=3e-2),
                      quantized=q, eval_ids=held.reshape(-1), eval_seq_len=24, progress=False)
    kl_after = heldout_kl(teacher, student, held)
    assert kl_after < 0.7 * kl_before, (kl_before, kl_after)  # 2.41 -> 1.34 nats when written
    assert np.mean(r.losses[-5:]) < 0.6 * np.mean(r.losses[:5])
    assert r.ppl_before is not None
    assert r.ppl_after is not None
    assert r.ppl_teacher is not None
    assert r.ppl_after.ppl < r.ppl_before.ppl
    assert r.gap_reduction is not None
    assert r.gap_reduction > 0.3  # ppl 237 -> 102, teacher 24: 0.63 when written
    # the student keeps its nn.Linear modules, holding the new weights' dequantized matrices
    assert set(r.quantized) == set(q)
    for name, qw in r.quantized.items():
        mod = student.get_submodule(name)
        assert mod is linears[name]
        assert type(mod) is torch.nn.Linear
        assert np.array_equal(mod.weight.detach().numpy().view(np.uint32), qw.dequantize().view(np.uint32))
        for key in ("indices", "res_indices", "outlier_indices", "perm"):
            x, y = getattr(qw, key), getattr(q[name], key)
            assert (x is None and y is None) or np.array_equal(x, y), key
        assert f16_exact(qw.centroids)
        assert f16_exact(qw.scale)
        assert f16_exact(qw.bias)
        assert not np.array_equal(qw.centroids, q[name].centroids)
    assert not any(isinstance(m, TrainableQuantizedLinear) for m in student.modules())
    for name, p in D._norm_params(student).items():
        assert f16_exact(p), name
    # embeddings and lm_head frozen by default; nothing left requiring a gradient that did not before
    assert torch.equal(student.get_input_embeddings().weight, emb)
    assert torch.equal(student.get_output_embeddings().weight, head)
    assert r.trained["embeddings"] == 0
    assert r.trained["quantized"] > 0
    assert r.trained["norms"] > 0
    assert all(p.requires_grad for p in student.parameters())  # as a fresh HF model has them
    assert not student.training
    d = r.to_dict()
    assert "quantized" not in d
    assert json.loads(json.dumps(d))["settings"] == r.settings.to_dict()
    assert isinstance(r, DistillReport)
    assert r.seconds >= r.train_seconds > 0


@pytest.mark.parametrize(("flag", "changed", "same"), [
    ("train_embeddings", "embed_tokens", "lm_head"),
    ("train_lm_head", "lm_head", "embed_tokens"),
])
def test_embeddings_and_lm_head_switches(flag: str, changed: str, same: str) -> None:
    teacher, student, q = pair()
    get = {"embed_tokens": lambda m: m.get_input_embeddings().weight,
           "lm_head": lambda m: m.get_output_embeddings().weight}
    before = {k: f(student).detach().clone() for k, f in get.items()}
    norms = {n: p.detach().clone() for n, p in D._norm_params(student).items()}
    r = distill_model(student, teacher, segments(), FAST.replace(steps=5, norm_lr=0.0, embed_lr=1e-2, **{flag: True}),
                      quantized=q, progress=False)
    assert not torch.equal(get[changed](student), before[changed])
    assert f16_exact(get[changed](student))
    assert torch.equal(get[same](student), before[same])
    assert r.trained["embeddings"] == before[changed].numel()
    assert r.trained["norms"] == 0
    for n, p in D._norm_params(student).items():  # norm_lr=0 freezes the norms
        assert torch.equal(p, norms[n])


def test_tied_embeddings_train_as_one_tensor() -> None:
    teacher, student, q = pair(tie=True)
    assert student.get_input_embeddings().weight is student.get_output_embeddings().weight
    before = student.get_input_embeddings().weight.detach().clone()
    r = distill_model(copy.deepcopy(student), teacher, segments(), FAST.replace(steps=2), quantized=q,
                      progress=False)
    assert r.trained["embeddings"] == 0
    s2 = copy.deepcopy(student)
    r = distill_model(s2, teacher, segments(), FAST.replace(steps=3, embed_lr=1e-2, train_lm_head=True),
                      quantized=q, progress=False)
    assert r.trained["embeddings"] == before.numel()
    assert s2.get_input_embeddings().weight is s2.get_output_embeddings().weight
    assert not torch.equal(s2.get_input_embeddings().weight, before)


def test_two_runs_are_identical() -> None:
    teacher, student, q = pair()
    s = FAST.replace(steps=6, grad_accum=2, batch_size=3, seed=5)
    a, b = copy.deepcopy(student), copy.deepcopy(student)
    ra = distill_model(a, teacher, segments(), s, quantized=q, progress=False)
    rb = distill_model(b, teacher, segments(), s, quantized=q, progress=False)
    assert ra.losses == rb.losses
    for name in q:
        assert_same_weight(ra.quantized[name], rb.quantized[name])
    sa, sb = state(a), state(b)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    # another seed draws the segments in another order
    rc = distill_model(copy.deepcopy(student), teacher, segments(), s.replace(seed=6), quantized=q, progress=False)
    assert rc.losses != ra.losses


def test_zero_steps_only_round_to_float16() -> None:
    teacher, student, q = pair()
    before = state(student)
    r = distill_model(student, teacher, segments(), FAST.replace(steps=0), quantized=q, progress=False)
    assert r.losses == []
    after = state(student)
    for name in q:
        want = TrainableQuantizedLinear(q[name]).to_quantized_weight("float16")
        assert_same_weight(r.quantized[name], want)
        assert torch.equal(after[f"{name}.weight"], torch.from_numpy(want.dequantize()))
    for k, v in before.items():  # the tiny model's plain tensors are float16 values already
        if not any(k.startswith(n + ".") for n in q):
            assert torch.equal(after[k], v), k


# ------------------------------------------------------------------------------ round trips
def _logits(model: Any, ids: np.ndarray) -> Any:
    with torch.no_grad():
        return model(torch.from_numpy(ids)).logits


def test_save_and_load_reproduce_the_distilled_model(tmp_path: Path) -> None:
    teacher, student, q = pair()
    r = distill_model(student, teacher, segments(), FAST.replace(steps=10), quantized=q, progress=False)
    out = vptq.save_quantized(tmp_path / "distilled", student, r.quantized)
    _, layers, _ = vptq.load_quantized_state(out)
    for name, qw in r.quantized.items():
        assert_same_weight(layers[name], qw)  # the returned weights are what the file holds
    loaded, _ = vptq.load_model(out)
    ls, ms = loaded.state_dict(), student.state_dict()
    for k, v in ls.items():  # every plain tensor (norms included) bit for bit
        if k in ms and not any(k.startswith(n + ".") for n in q):
            assert torch.equal(v, ms[k]), k
    ids = segments(2, 20, seed=3)
    # kernel vs dense matmul: the same weights, another summation order
    torch.testing.assert_close(_logits(loaded, ids), _logits(student, ids), rtol=1e-4, atol=1e-4)


def test_loaded_student_trains_like_the_dense_one_and_round_trips(tmp_path: Path) -> None:
    teacher, student, q = pair()
    ckpt = vptq.save_quantized(tmp_path / "quantized", student, q)
    _, layers, _ = vptq.load_quantized_state(ckpt)
    # (a) the dense form of exactly the checkpoint (float16 codebooks) ...
    dense = copy.deepcopy(student)
    with torch.no_grad():
        for name, qw in layers.items():
            dense.get_submodule(name).weight.copy_(torch.from_numpy(qw.dequantize()))
    # ... and (b) the checkpoint as vptq.load_model gives it
    loaded, _ = vptq.load_model(ckpt)
    ids = segments(2, 20, seed=3)
    s = FAST.replace(steps=5)
    ra = distill_model(dense, teacher, segments(), s, quantized=layers, progress=False)
    rb = distill_model(loaded, teacher, segments(), s, progress=False)
    assert ra.losses == rb.losses  # the same training, module for module
    for name in layers:
        assert_same_weight(rb.quantized[name], ra.quantized[name])
        mod = loaded.get_submodule(name)
        assert isinstance(mod, QuantizedLinear)
        assert mod.qweight is rb.quantized[name]
    want = _logits(loaded, ids)
    # a model of inference modules is saved as a (config, state dict) pair
    out = vptq.save_quantized(tmp_path / "distilled", (loaded.config, loaded.state_dict()), rb.quantized)
    again, _ = vptq.load_model(out)
    assert torch.equal(_logits(again, ids), want)  # the in-memory model is what the file holds
    # a subset of the layers: only those train, the others keep their modules
    again_layers = vptq.load_quantized_state(out)[1]
    subset = {n: w for n, w in again_layers.items() if n.endswith("q_proj")}
    others = {n: again.get_submodule(n) for n in again_layers if n not in subset}
    rs = distill_model(again, teacher, segments(), s.replace(steps=2), quantized=subset, progress=False)
    assert set(rs.quantized) == set(subset)
    assert all(again.get_submodule(n) is m for n, m in others.items())


def test_progress_bar_runs(capsys: pytest.CaptureFixture[str]) -> None:
    teacher, student, q = pair()
    distill_model(student, teacher, segments(), FAST.replace(steps=2, teacher="topk", topk=4), quantized=q,
                  progress=True)
    err = capsys.readouterr().err
    assert "distill" in err
    assert "loss=" in err


# ------------------------------------------------------------------------------- bad input
def test_bad_inputs_leave_the_student_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    teacher, student, q = pair()
    before = state(student)
    mods = {n: student.get_submodule(n) for n in q}
    with pytest.raises(TypeError, match="settings"):
        distill_model(student, teacher, segments(), {"steps": 2}, quantized=q)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="quantized="):
        distill_model(student, teacher, segments(), FAST, progress=False)
    with pytest.raises(ValueError, match="teacher"):
        distill_model(student, student, segments(), FAST, quantized=q, progress=False)
    with pytest.raises(ValueError, match=r"Distill\.topk"):
        distill_model(student, teacher, segments(), FAST.replace(teacher="topk", topk=VOCAB + 1), quantized=q,
                      progress=False)
    with pytest.raises(ValueError, match="token ids"):
        distill_model(student, teacher, segments() + VOCAB, FAST, quantized=q, progress=False)
    with pytest.raises(ValueError, match="segments"):
        distill_model(student, teacher, np.zeros((4,), dtype=np.int64), FAST, quantized=q, progress=False)
    with pytest.raises(TypeError, match="QuantizedWeight"):
        distill_model(student, teacher, segments(), FAST, quantized={**q, "x": np.zeros(3)}, progress=False)
    # the last layer's weight no longer matches its mapping: nothing may stay swapped
    o0, o1 = "model.layers.0.self_attn.o_proj", "model.layers.1.self_attn.o_proj"
    with pytest.raises(ValueError, match=r"\['model.layers.1.self_attn.o_proj'\] does not dequantize"):
        distill_model(student, teacher, segments(), FAST, quantized={**q, o1: q[o0]}, progress=False)
    with pytest.raises(ValueError, match="expected shape"):
        distill_model(student, teacher, segments(), FAST, quantized={**q, o1: q["model.layers.0.mlp.up_proj"]},
                      progress=False)
    big = transformers.AutoModelForCausalLM.from_config(
        transformers.LlamaConfig(hidden_size=32, num_hidden_layers=1, intermediate_size=64, vocab_size=VOCAB + 4,
                                 num_attention_heads=4, num_key_value_heads=2))
    with pytest.raises(ValueError, match="vocabulary"):
        distill_model(student, big, segments(), FAST, quantized=q, progress=False)
    half = copy.deepcopy(teacher).to(torch.bfloat16)
    with pytest.raises(ValueError, match="float32"):
        distill_model(half, teacher, segments(), FAST, quantized=q, progress=False)

    # an interruption in the middle of training
    calls = {"n": 0}
    real = D._kl_full

    def flaky(*a: Any) -> Any:
        calls["n"] += 1
        if calls["n"] > 5:
            raise KeyboardInterrupt
        return real(*a)

    monkeypatch.setattr(D, "_kl_full", flaky)
    with pytest.raises(KeyboardInterrupt):
        distill_model(student, teacher, segments(), FAST.replace(train_embeddings=True, embed_lr=1e-2), quantized=q,
                      progress=False)
    assert calls["n"] > 5
    after = state(student)
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert all(student.get_submodule(n) is m for n, m in mods.items())
    assert all(p.requires_grad for p in student.parameters())
