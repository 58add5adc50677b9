"""`mvgpt verify` (`bash scripts/verify_qved_setup.sh`): the QVED pre-flight check, printed as it runs."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

HELP = "check the QVED setup: data, videos (decoded), annotations, scripts, packages, GPU, base checkpoint"
DESCRIPTION = (
    "Check the QVED finetuning setup: dataset files, videos (each one is decoded), annotations (parsed as training "
    "parses them), required scripts, Python packages, GPU and the base checkpoint. Exits 1 when something is "
    "wrong; warnings (no GPU, short videos, checkpoint not downloaded yet) do not fail."
)
_COLOURS = {"OK": "\033[32m", "INFO": "\033[36m", "WARN": "\033[33m", "FAIL": "\033[31m"}
_RESET = "\033[0m"


def configure(parser: argparse.ArgumentParser) -> None:
    from ..qved.verify import MODEL_PATH_ENV_VAR

    parser.add_argument("--dataset-dir", help="dataset folder (default: <project root>/dataset)")
    parser.add_argument("--project-root", default=".", help="repository root holding scripts/ and utils/ (default: .)")
    parser.add_argument("--model-path", help=f"local base checkpoint folder or hub id (default: ${MODEL_PATH_ENV_VAR} or the published one)")
    parser.add_argument(
        "--skip-environment",
        action="store_true",
        help="only check the dataset and scripts (skip packages, GPU and checkpoint: faster)",
    )
    parser.add_argument("--no-color", action="store_true", help="plain output even on a terminal")


def run(args: argparse.Namespace) -> int:
    from ..qved.verify import FAIL, OK, WARN, Report, run_checks

    colour = sys.stdout.isatty() and not args.no_color and not os.environ.get("NO_COLOR")

    def paint(text: str, status: str) -> str:
        return f"{_COLOURS[status]}{text}{_RESET}" if colour else text

    def emit(kind: str, status: str | None, text: str) -> None:
        if kind == "section":
            print(f"\n== {text} ==", flush=True)
        elif kind == "result":
            print(f"{paint(f'[{status:^4}]', status)} {text}", flush=True)
        else:
            print(f"         - {text}", flush=True)

    project_root = Path(args.project_root).resolve()
    dataset_dir = Path(args.dataset_dir) if args.dataset_dir else None
    report = run_checks(Report(emit=emit), project_root, dataset_dir, args.model_path, args.skip_environment)

    print("\n== Summary ==")
    counts = report.counts
    summary = f"{counts[OK]} ok, {counts[WARN]} warnings, {counts[FAIL]} failures"
    if report.failures:
        print(paint(f"SETUP INCOMPLETE: {summary}", FAIL))
        for failure in report.failures:
            print(f"  - {failure}")
        return 1
    print(paint(f"SETUP OK: {summary}", OK))
    return 0
