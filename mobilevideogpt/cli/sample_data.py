"""`mvgpt sample-data`: a small SYNTHETIC dataset in QVED's layout."""

from __future__ import annotations

import argparse

HELP = "write a small synthetic dataset in the QVED layout, for trying the pipeline offline"
DESCRIPTION = (
    "Write a small SYNTHETIC dataset in the QVED layout (6 exercise folders x 5 short videos of moving shapes, "
    "invented feedback labels, ground_truth.json, manifest.json, qved_train.json) for trying the pipeline "
    "offline. It is not real exercise data: replace it with the real QVED for training. With --sessions N: N long "
    "synthetic workouts instead (several exercises in a row, sessions.json with the time of each change), for live "
    "coaching (`mvgpt live`, `mvgpt convert --windows`, `mvgpt eval --live`)."
)
DEFAULT_OUT = "dataset"
DEFAULT_SESSIONS_OUT = "dataset/sessions"


def configure(parser: argparse.ArgumentParser) -> None:
    from ..qved.sample_dataset import VIDEOS_PER_EXERCISE

    parser.add_argument(
        "--out", help=f"output folder (default: {DEFAULT_OUT}; with --sessions: {DEFAULT_SESSIONS_OUT})"
    )
    parser.add_argument("--seed", type=int, default=0, help="generation seed (default 0)")
    parser.add_argument(
        "--videos-per-exercise",
        type=int,
        default=VIDEOS_PER_EXERCISE,
        help=f"videos per exercise folder (default {VIDEOS_PER_EXERCISE}, as in the guide)",
    )
    parser.add_argument(
        "--sessions",
        type=int,
        metavar="N",
        help="write N long synthetic workout sessions (3 exercises of 10-16 s each) and their sessions.json instead",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="add the sample to a folder holding other (e.g. real) data; a file sample-data did not write is never "
        "replaced (if one is in the way, nothing is written)",
    )


def run(args: argparse.Namespace) -> int:
    if args.sessions is not None:
        return _sessions(args)
    from ..qved.sample_dataset import make_sample_dataset

    if args.videos_per_exercise < 1:
        raise ValueError(f"--videos-per-exercise must be at least 1, got {args.videos_per_exercise}")
    make_sample_dataset(
        args.out or DEFAULT_OUT, seed=args.seed, force=args.force, log=print, videos_per_exercise=args.videos_per_exercise
    )
    return 0


def _sessions(args: argparse.Namespace) -> int:
    from ..qved.sessions import make_sessions

    if args.sessions < 1:
        raise ValueError(f"--sessions must be at least 1, got {args.sessions}")
    labels = make_sessions(args.out or DEFAULT_SESSIONS_OUT, count=args.sessions, seed=args.seed, force=args.force)
    print(f"wrote {args.sessions} synthetic workout session(s) to {labels.parent}; their feedback times: {labels}")
    return 0
