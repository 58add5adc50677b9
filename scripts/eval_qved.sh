#!/usr/bin/env bash
# Evaluate Mobile-VideoGPT on a QVED split: per-sample predictions (resumable) and a metrics report.
# Every setting below can be overridden by an environment variable of the same name, e.g.
#   MODEL=results/qved_finetune_mobilevideogpt_0.5B/checkpoint-100 bash scripts/eval_qved.sh
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
  cat <<USAGE
Usage: bash scripts/eval_qved.sh [--help] [OPTIONS...]

Runs the model on every sample of SPLIT, writes predictions (JSONL, resumable: rerun to continue) and a
report (JSON + Markdown): exercise identification accuracy, ROUGE-L, METEOR, BERTScore (when available
locally) and throughput. OPTIONS go to 'python -m mobilevideogpt.evaluation' (listed below), e.g.
  --compare Amshaker/Mobile-VideoGPT-0.5B   evaluate the base model too, side by side
  --limit 5                                 only the first 5 samples
  --output_dir DIR                          where predictions and reports go

Environment variables (default):
  MODEL    model: training run/checkpoint folder, model folder or hub id (results/qved_finetune_mobilevideogpt_0.5B,
           i.e. its checkpoint-final); ignored when OPTIONS contain --model_path
  SPLIT    split file                                   (dataset/qved_test.json); ignored with --split
  PYTHON   python interpreter                           (python)

USAGE
}

PYTHON=${PYTHON:-python}
MODEL=${MODEL:-results/qved_finetune_mobilevideogpt_0.5B}
SPLIT=${SPLIT:-dataset/qved_test.json}

DEFAULTS=(--model_path "$MODEL")
SPLIT_ARGS=(--split "$SPLIT")
for arg in "$@"; do
  case "$arg" in
    -h|--help) usage; exec "$PYTHON" -m mobilevideogpt.evaluation --help ;;
    --model_path|--model_path=*|--model-path|--model-path=*) DEFAULTS=() ;;
    --split|--split=*|--data|--data=*) SPLIT_ARGS=() ;;
  esac
done

export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" -m mobilevideogpt.evaluation "${DEFAULTS[@]}" "${SPLIT_ARGS[@]}" "$@"
