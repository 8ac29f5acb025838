"""The committed type stub of the extension module matches what pybind11-stubgen generates."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

STUB = Path(__file__).resolve().parents[2] / "python" / "vptq" / "_core.pyi"


def test_core_stub_is_up_to_date(tmp_path: Path) -> None:
    pytest.importorskip("pybind11_stubgen")
    res = subprocess.run(
        [sys.executable, "-m", "pybind11_stubgen", "vptq._core", "-o", str(tmp_path), "--exit-code"],
        capture_output=True, text=True, check=False,
    )
    assert res.returncode == 0, f"stub generation failed:\n{res.stderr}"
    generated = (tmp_path / "vptq" / "_core.pyi").read_text()
    assert STUB.is_file(), "python/vptq/_core.pyi is missing: run scripts/gen_stubs.sh"
    assert generated == STUB.read_text(), "python/vptq/_core.pyi is stale: run scripts/gen_stubs.sh"
