#!/usr/bin/env bash
# Check the QVED finetuning setup (dataset, videos, annotations, scripts, environment, GPU, base checkpoint).
# Usage: bash scripts/verify_qved_setup.sh [--dataset-dir DIR] [--model-path PATH] [--skip-environment] [--help]
# The Python interpreter is $PYTHON if set, else `python` (the active conda env), else `python3`.
# The checks live in mobilevideogpt/data/verify.py.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

PYTHON_BIN="${PYTHON:-}"
if [[ -z "$PYTHON_BIN" ]]; then
    if command -v python >/dev/null 2>&1; then
        PYTHON_BIN=python
    elif command -v python3 >/dev/null 2>&1; then
        PYTHON_BIN=python3
    else
        echo "[FAIL] no python found: activate the environment first (conda activate mobile_videogpt)" >&2
        exit 1
    fi
fi

# Use this checkout's package, installed or not.
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

# A broken install must be reported, not end in a traceback.
if ! import_error="$("$PYTHON_BIN" -c 'import mobilevideogpt.data.verify' 2>&1)"; then
    echo "[FAIL] $PYTHON_BIN cannot load the verification code from $ROOT:" >&2
    echo "       $(printf '%s\n' "$import_error" | tail -n 1)" >&2
    echo "       install the project first: pip install -e \"$ROOT\"" >&2
    exit 1
fi

exec "$PYTHON_BIN" -m mobilevideogpt.data.verify --project-root "$ROOT" "$@"
