"""What model-level tests need (optional packages, the SmolLM2 model), and what happens without it.

Without a requirement a test skips and names what is missing and how to install it — except under
CI (``CI=true``), where the suite must prove the README's commands installed everything: there a
missing model or extra fails the test with the same reason.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from pathlib import Path
from types import ModuleType
from typing import NoReturn

import pytest


def under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def unavailable(reason: str) -> NoReturn:
    """Skip with ``reason``, or fail with it under CI."""
    if under_ci():
        pytest.fail(f"{reason} [a failure, not a skip, because CI=true]", pytrace=False)
    pytest.skip(reason)


def modules(*names: str, why: str = "") -> list[ModuleType]:
    """Import the named optional modules, or :func:`unavailable` naming the missing ones."""
    missing = [n for n in names if importlib.util.find_spec(n) is None]
    if missing:
        unavailable(f"{why or 'this test'} needs the Python packages {missing} (scripts/setup.sh installs them)")
    return [importlib.import_module(n) for n in names]


def smollm2(why: str = "this test") -> Path:
    """The verified SmolLM2-135M GGUF with what loading it needs (torch, transformers, gguf), or
    :func:`unavailable` with the reason and the install command."""
    modules("torch", "transformers", "gguf", "safetensors", why=why)
    from vptq.models.assets import SMOLLM2_GGUF, AssetMissingError, locate

    try:
        return locate(SMOLLM2_GGUF)
    except AssetMissingError as e:
        reason = f"{why} needs the SmolLM2 model: {e}"
    unavailable(reason)
