#!/usr/bin/env bash
# Runs every test: C++ GoogleTest suite (release build + ASan/UBSan build, via
# CTest) and the Python suite (pytest). Usage: scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
JOBS=${JOBS:-$(nproc)}
PYBIND_DIR=$("$PY" -m pybind11 --cmakedir)

echo "== C++ tests (Release, -Werror)"
cmake -S . -B build/cpp -G Ninja -DCMAKE_BUILD_TYPE=Release -DVPTQ_BUILD_TESTS=ON \
  -DVPTQ_BUILD_PYTHON=OFF -DVPTQ_WERROR=ON -Dpybind11_DIR="$PYBIND_DIR" >/dev/null
cmake --build build/cpp -j "$JOBS"
ctest --test-dir build/cpp --output-on-failure -j "$JOBS"

echo "== C++ tests (ASan+UBSan)"
cmake -S . -B build/asan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DVPTQ_BUILD_TESTS=ON \
  -DVPTQ_BUILD_PYTHON=OFF -DVPTQ_WERROR=ON -DVPTQ_SANITIZE=ON >/dev/null
cmake --build build/asan -j "$JOBS"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  GTEST_FILTER="${ASAN_GTEST_FILTER:-*}" ctest --test-dir build/asan --output-on-failure -j "$JOBS"

echo "== Python tests"
"$PY" -m pip install -q --no-build-isolation -e ".[test]" >/dev/null
"$PY" -m ruff check python tests/py bench
"$PY" -m pytest tests/py "$@"
