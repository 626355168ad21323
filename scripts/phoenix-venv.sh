#!/usr/bin/env bash
# Arize Phoenix (a real OTLP/HTTP trace receiver) for tests/test_tracing.py, in a venv of its own because it
# is heavy: artifacts/phoenix-venv, made once (about a minute); the test finds its `phoenix` executable there.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=artifacts/phoenix-venv
if [ ! -x "$VENV/bin/phoenix" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet arize-phoenix
fi
