#!/usr/bin/env bash
# The web page and OpenAI-compatible API: `bash scripts/serve.sh --model_path CHECKPOINT [options]`
# (`--help` lists them). Listens on 127.0.0.1:7860 unless --host/--port say otherwise.
exec "${PYTHON:-python}" -m mobilevideogpt serve "$@"
