#!/usr/bin/env bash
# Stage-3 LoRA finetuning of Mobile-VideoGPT-0.5B on QVED under DeepSpeed ZeRO-3: `mvgpt train`, run from the
# project root. Settings are environment variables (BATCH=2 GACC=8 MAXLEN=1024 bash scripts/finetune_qved.sh);
# `--help` lists them with the guide's defaults, `--demo` runs the offline demo. Python: $PYTHON, else `python`.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" -m mobilevideogpt train "$@"
