"""The notebooks under notebooks/: stored without outputs, and executed end to end in quick mode
(VPTQ_NOTEBOOK_QUICK=1) so they cannot rot; the walkthrough's perplexity table must hold finite
numbers with VPTQ below GPTQ-2bit. Without the model or the notebook extras they skip with the reason,
and under CI=true they fail (tests/py/need.py)."""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

import pytest

import need

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
CELL_TIMEOUT = 1200  # seconds per cell; quick mode needs far less on an idle 2-core machine
CLEAN = "store notebooks without outputs (Jupyter: Edit > Clear Outputs of All Cells, then save)"


def test_notebooks_exist() -> None:
    assert NOTEBOOKS, "no notebooks found under notebooks/"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_stored_without_outputs(path: Path) -> None:
    nb = json.loads(path.read_text(encoding="utf-8"))
    assert nb["nbformat"] == 4
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "code":
            assert cell.get("execution_count") is None, f"{path.name} cell {i}: execution_count is set; {CLEAN}"
            assert cell.get("outputs") == [], f"{path.name} cell {i}: has outputs; {CLEAN}"
        assert "execution" not in cell.get("metadata", {}), f"{path.name} cell {i}: execution metadata; {CLEAN}"


def _execute(path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    nbformat, nbclient, _, _ = need.modules("nbformat", "nbclient", "ipykernel", "matplotlib",
                                            why="executing the notebooks (vptq[notebook])")
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec("python3")
    except NoSuchKernel:
        need.unavailable("no 'python3' Jupyter kernel installed (python -m ipykernel install --user)")
    import vptq

    # The kernel is a separate process (working directory: the notebook's folder) that inherits
    # this environment: make it import the vptq this test imported (and the extension that
    # VPTQ_EXT_DIR points to, if set, as an absolute path), plot inline (PNGs rendered with Agg,
    # no display needed) and use the quick settings.
    monkeypatch.setenv("VPTQ_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    package_parent = str(Path(vptq.__file__).resolve().parents[1])
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([package_parent, *filter(None, [os.environ.get("PYTHONPATH")])]))
    if os.environ.get("VPTQ_EXT_DIR"):
        monkeypatch.setenv("VPTQ_EXT_DIR", os.path.abspath(os.environ["VPTQ_EXT_DIR"]))
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                                     resources={"metadata": {"path": str(path.parent)}})
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as e:
        pytest.fail(f"{path.name}: a cell failed:\n{e}")
    return nb


def _text(nb: Any) -> list[str]:
    """Text output of each code cell (stdout and text/plain results)."""
    out = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        parts = []
        for o in cell.outputs:
            if o.output_type == "stream" and o.name == "stdout":
                parts.append(o.text)
            elif o.output_type in ("execute_result", "display_data"):
                parts.append(o.get("data", {}).get("text/plain", ""))
        out.append("".join(parts))
    return out


def _perplexity_table(texts: list[str]) -> dict[str, tuple[float, float]]:
    """{method: (bits/weight, perplexity)} from the cell that prints the perplexity table."""
    rows: dict[str, tuple[float, float]] = {}
    for text in texts:
        lines = text.splitlines()
        if not any(re.match(r"method\s+bits/w\s+perplexity", ln) for ln in lines):
            continue
        for ln in lines:
            m = re.match(r"(reference \(fp32\)|VPTQ \S+|GPTQ 2-bit g128|RTN 2-bit g128)\s+(\S+)\s+(\S+)\s+\S+$", ln)
            if m:
                rows[m[1]] = (float(m[2]), float(m[3]))
    return rows


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_executes_in_quick_mode(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if path.name == "walkthrough.ipynb":
        need.smollm2("the walkthrough notebook")
    nb = _execute(path, monkeypatch)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not [o for o in cell.outputs if o.output_type == "error"]
    if path.name != "walkthrough.ipynb":
        return
    texts = _text(nb)
    assert any("quick settings" in t for t in texts)
    import vptq

    assert any(f"from {Path(vptq.__file__).resolve().parent}," in t for t in texts), "kernel imported another vptq"
    assert any("max |by hand - dequantize()| = 0.0" in t for t in texts), "hand-made Ŵ differs from dequantize()"
    table = _perplexity_table(texts)
    assert set(table) == {"reference (fp32)", "VPTQ v8-k256-256", "GPTQ 2-bit g128", "RTN 2-bit g128"}, table
    for method, (bits, ppl) in table.items():
        assert math.isfinite(bits), (method, bits)
        assert math.isfinite(ppl), (method, ppl)
        assert ppl > 1, (method, ppl)
    assert 2.0 <= table["VPTQ v8-k256-256"][0] < 2.6
    assert table["reference (fp32)"][1] < table["VPTQ v8-k256-256"][1] < table["GPTQ 2-bit g128"][1], table
    plots = sum(1 for c in nb.cells if c.cell_type == "code" for o in c.outputs
                if o.output_type == "display_data" and "image/png" in o.get("data", {}))
    assert plots >= 3, f"expected the three Part 1 figures, got {plots} images"
