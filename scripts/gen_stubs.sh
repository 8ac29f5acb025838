#!/usr/bin/env bash
# Regenerates python/vptq/_core.pyi from the installed extension (run after changing bindings).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PY" -m pybind11_stubgen vptq._core -o "$tmp" --exit-code
cp "$tmp/vptq/_core.pyi" python/vptq/_core.pyi
echo "wrote python/vptq/_core.pyi"
