#!/usr/bin/env bash
# The guide's pre-flight check (dataset, videos, annotations, scripts, environment, GPU, base checkpoint):
# `mvgpt verify` for this checkout. `--help` lists its options. Python: $PYTHON, else `python`, else `python3`.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON_BIN="${PYTHON:-$(command -v python || command -v python3)}"
if [[ -z "$PYTHON_BIN" ]]; then
    echo "[FAIL] no python found: activate the environment first (conda activate mobile_videogpt)" >&2
    exit 1
fi
# A broken install is reported in one line, not as a traceback.
if ! import_error="$("$PYTHON_BIN" -c 'import mobilevideogpt.cli' 2>&1)"; then
    echo "[FAIL] $PYTHON_BIN cannot load mobilevideogpt: $(printf '%s\n' "$import_error" | tail -n 1)" >&2
    echo "       install the project first: pip install -e \"$ROOT\"" >&2
    exit 1
fi
exec "$PYTHON_BIN" -m mobilevideogpt verify --project-root "$ROOT" "$@"
