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
    from ..constants import NUM_FRAMES
    from ..live.defaults import DEFAULT_STRIDE_S, DEFAULT_WINDOW_S

    parser.add_argument(
        "--windows",
        action="store_true",
        help="live coaching: cut long session videos with timestamped feedback (--labels) into window samples "
        "(qved_windows_*.json + clips) instead of converting ground_truth.json",
    )
    windows = parser.add_argument_group("--windows")
    windows.add_argument("--labels", help="session label file: {video: [{time, text}, ...]}")
    windows.add_argument("--window", type=float, default=DEFAULT_WINDOW_S, help=f"window seconds (default {DEFAULT_WINDOW_S})")
    windows.add_argument("--stride", type=float, default=DEFAULT_STRIDE_S, help=f"stride seconds (default {DEFAULT_STRIDE_S})")
    windows.add_argument("--num-frames", type=int, default=NUM_FRAMES, help=f"frames per window (default {NUM_FRAMES})")
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


def _windows(args: argparse.Namespace) -> int:
    from ..qved.windows import convert_windows

    if not args.labels:
        print("error: --windows needs --labels SESSIONS.json (see docs/LIVE.md)", file=sys.stderr)
        return 2
    convert_windows(
        args.labels, args.output_dir or args.dataset_dir, args.window, args.stride, args.num_frames,
        args.val_ratio, args.test_ratio, args.seed, log=print,
        warn=lambda message: print(f"warning: {message}", file=sys.stderr),
    )
    return 0


def run(args: argparse.Namespace) -> int:
    from ..qved.convert import convert

    if not 0 <= args.generic_prompt_ratio <= 1:
        print("error: --generic-prompt-ratio must be between 0 and 1", file=sys.stderr)
        return 2
    if args.val_ratio + args.test_ratio >= 1:
        print("error: --val-ratio + --test-ratio must be below 1 (train needs samples)", file=sys.stderr)
        return 2
    if args.windows:
        return _windows(args)
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
