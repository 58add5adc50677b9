"""`mvgpt convert` (`python utils/qved_from_fine_labels.py`): QVED labels → `dataset/qved_*.json`."""

from __future__ import annotations

import argparse
import sys

HELP = "convert QVED's ground_truth.json + manifest.json into qved_train.json (+ val/test splits)"
DESCRIPTION = (
    "Convert QVED fine-grained labels (ground_truth.json + manifest.json) into Mobile-VideoGPT annotations. By "
    "default every usable record goes to qved_train.json (as in the guide); --val-ratio/--test-ratio also write "
    "qved_val.json/qved_test.json, stratified by exercise, never splitting a video and its augmented copies. "
    "Unusable records are reported and skipped."
)


def _ratio(text: str) -> float:
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from exc
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {value}")
    return value


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset-dir", default="dataset", help="dataset folder (default: dataset)")
    parser.add_argument("--ground-truth", help="label records (default: <dataset-dir>/ground_truth.json)")
    parser.add_argument("--manifest", help="video → class mapping (default: <dataset-dir>/manifest.json)")
    parser.add_argument("--output-dir", help="where qved_*.json are written (default: <dataset-dir>)")
    parser.add_argument(
        "--val-ratio", type=_ratio, default=0.0, help="fraction of videos per exercise for qved_val.json (default 0)"
    )
    parser.add_argument(
        "--test-ratio", type=_ratio, default=0.0, help="fraction of videos per exercise for qved_test.json (default 0)"
    )
    parser.add_argument("--seed", type=int, default=42, help="split seed (default 42)")
    parser.add_argument(
        "--generic-prompt-ratio",
        type=float,
        default=0.0,
        help="share of training prompts that name no exercise ('Analyze this exercise video ...'), so the model "
        "learns to tell the exercise from the video (default 0: every prompt names it, as in the guide)",
    )


def run(args: argparse.Namespace) -> int:
    from ..qved.convert import convert

    if not 0 <= args.generic_prompt_ratio <= 1:
        print("error: --generic-prompt-ratio must be between 0 and 1", file=sys.stderr)
        return 2
    if args.val_ratio + args.test_ratio >= 1:
        print("error: --val-ratio + --test-ratio must be below 1 (train needs samples)", file=sys.stderr)
        return 2
    try:
        convert(
            args.dataset_dir,
            args.ground_truth,
            args.manifest,
            args.output_dir,
            args.val_ratio,
            args.test_ratio,
            args.seed,
            log=print,
            warn=lambda message: print(f"warning: {message}", file=sys.stderr),
            generic_prompt_ratio=args.generic_prompt_ratio,
        )
    except OSError as exc:
        raise OSError(f"cannot write the annotation files: {exc}") from exc
    return 0
