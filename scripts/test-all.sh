#!/usr/bin/env bash
# Every test of ferroloop, in one pass: Rust lint and unit tests, Python lint, a release build
# installed into the current interpreter, the behaviour tests (twice: plain and with
# PYTHONASYNCIODEBUG=1), the type-stub check and CPython's own asyncio tests run on ferroloop.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

step() { printf '\n=== %s\n' "$*"; }

step "install test dependencies"
"$PY" -m pip install -q -r requirements-test.txt

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo test (core)"
cargo test -p ferroloop-core

step "ruff"
"$PY" -m ruff check .
"$PY" -m ruff format --check .

step "build and install ferroloop (release)"
"$PY" -m pip install -q .
# Run against the installed package, not the source tree.
cd tests
"$PY" -c "import ferroloop, sys; print('ferroloop from', ferroloop.__file__)"

step "type stubs match the native module (mypy.stubtest)"
"$PY" -m mypy.stubtest ferroloop._ferroloop --allowlist ../python/stubtest-allowlist.txt

step "pytest"
"$PY" -m pytest -q -p no:cacheprovider --rootdir=.. . --ignore=cpython

step "pytest with PYTHONASYNCIODEBUG=1"
PYTHONASYNCIODEBUG=1 "$PY" -m pytest -q -p no:cacheprovider --rootdir=.. . --ignore=cpython

step "CPython test_asyncio on ferroloop (conformance)"
"$PY" cpython/run_conformance.py
