"""`mvgpt sample-data`: a small SYNTHETIC dataset in QVED's layout."""

from __future__ import annotations

import argparse

HELP = "write a small synthetic dataset in the QVED layout, for trying the pipeline offline"
DESCRIPTION = (
    "Write a small SYNTHETIC dataset in the QVED layout (6 exercise folders x 5 short videos of moving shapes, "
    "invented feedback labels, ground_truth.json, manifest.json, qved_train.json) for trying the pipeline "
    "offline. It is not real exercise data: replace it with the real QVED for training."
)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="dataset", help="output folder (default: dataset)")
    parser.add_argument("--seed", type=int, default=0, help="generation seed (default 0)")
    parser.add_argument(
        "--force",
        action="store_true",
        help="add the sample to a folder holding other (e.g. real) data; a file sample-data did not write is never "
        "replaced (if one is in the way, nothing is written)",
    )


def run(args: argparse.Namespace) -> int:
    from ..qved.sample_dataset import make_sample_dataset

    make_sample_dataset(args.out, seed=args.seed, force=args.force, log=print)
    return 0
