"""QVED-style live-coaching training data: session label file → window clips + `qved_windows_*.json`.

    sessions.json (see mobilevideogpt.live.labels)      dataset/windows/<session>/<NNNNN>_<first>-<end>.mkv
    {"sessions/workout_01.mp4": [{"time": 3.0,   →      dataset/qved_windows_train.json (+ _val / _test)
                                  "text": ...}]}

Every record asks the generic live prompt (`LIVE_PROMPT`, the QVED prompt naming no exercise: a live
session has several, and nobody names them) and answers with the window's feedback or "No feedback."
(`mobilevideogpt.live.dataset`). The files have the `qved_*.json` format, so the usual recipe trains on them:

    DATASET=dataset/qved_windows_train.json bash scripts/finetune_qved.sh

Splits are by session (windows of one session overlap, so they never straddle splits), deterministic for a
seed. Rerunning replaces the clips of the sessions it writes.
"""

from __future__ import annotations

import logging
import math
import os
import random
from collections.abc import Callable
from pathlib import Path

from ..constants import NUM_FRAMES
from ..live.defaults import DEFAULT_STRIDE_S, DEFAULT_WINDOW_S
from ..live.labels import LabelError, SessionLabels, load_labels
from . import SPLITS, exercise_prompt
from .convert import QvedInputError, write_json

logger = logging.getLogger(__name__)

LIVE_PROMPT = exercise_prompt(None)
WINDOW_SPLIT_FILES = {split: f"qved_windows_{split}.json" for split in SPLITS}
CLIPS_FOLDER = "windows"


def split_sessions(
    sessions: list[SessionLabels], val_ratio: float, test_ratio: float, seed: int
) -> dict[str, list[SessionLabels]]:
    """Sessions shuffled with `seed` (from sorted order): round(n·test) to test, round(n·val) to val, the
    rest (at least one) to train."""
    if not (0 <= val_ratio < 1 and 0 <= test_ratio < 1 and val_ratio + test_ratio < 1):
        raise ValueError(f"need 0 <= val, test ratios and val + test < 1, got {val_ratio}, {test_ratio}")
    ordered = sorted(sessions, key=lambda s: s.key)
    random.Random(seed).shuffle(ordered)
    n_test = math.floor(len(ordered) * test_ratio + 0.5)
    n_val = math.floor(len(ordered) * val_ratio + 0.5)
    while n_test + n_val >= len(ordered) and n_test + n_val > 0:
        if n_val >= n_test:
            n_val -= 1
        else:
            n_test -= 1
    return {
        "test": ordered[:n_test],
        "val": ordered[n_test : n_test + n_val],
        "train": ordered[n_test + n_val :],
    }


def convert_windows(
    labels_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    window_s: float = DEFAULT_WINDOW_S,
    stride_s: float = DEFAULT_STRIDE_S,
    num_frames: int = NUM_FRAMES,
    val_ratio: float = 0.0,
    test_ratio: float = 0.0,
    seed: int = 42,
    log: Callable[[str], None] = logger.info,
    warn: Callable[[str], None] = logger.warning,
) -> dict[str, Path]:
    """Write window clips under `output_dir/windows/` and `output_dir/qved_windows_<split>.json`; returns the
    annotation file of each split written. Video paths in the records are relative to the parent of
    `output_dir` (the guide's `dataset/...` form).

    Raises QvedInputError for an unusable label file or video."""
    output_dir = Path(output_dir).resolve()
    try:
        sessions = load_labels(labels_path)
    except LabelError as exc:
        raise QvedInputError(str(exc)) from None
    if not sessions:
        raise QvedInputError(f"{labels_path} lists no session")
    if any(session.video is None for session in sessions):
        raise QvedInputError(f"{labels_path} must map each session video to its feedback (not a bare list)")
    missing = [str(session.video) for session in sessions if not session.video.is_file()]
    if missing:
        raise QvedInputError(f"session video(s) not found: {', '.join(missing[:5])} (paths in {labels_path} are "
                             "relative to its folder)")
    # Imported here: parsers import this module for its options and LIVE_PROMPT, and must not load torch.
    from mobilevideogpt.live.dataset import build_window_samples
    from mobilevideogpt.live.frames import FrameSourceError
    from mobilevideogpt.live.suppress import NO_FEEDBACK_ANSWER

    clip_root = output_dir / CLIPS_FOLDER
    try:
        by_session = build_window_samples(sessions, clip_root, window_s, stride_s, num_frames, NO_FEEDBACK_ANSWER, warn)
    except (FrameSourceError, ValueError) as exc:
        raise QvedInputError(str(exc)) from None

    written = {}
    wanted = ["train"] + [split for split, ratio in (("val", val_ratio), ("test", test_ratio)) if ratio > 0]
    for split, members in split_sessions(sessions, val_ratio, test_ratio, seed).items():
        if split not in wanted:
            continue
        records = [
            sample.to_record(Path(os.path.relpath(sample.clip, output_dir.parent)).as_posix(), LIVE_PROMPT, split)
            for session in sorted(members, key=lambda s: s.key)
            for sample in by_session[session.key]
        ]
        target = output_dir / WINDOW_SPLIT_FILES[split]
        write_json(target, records)
        written[split] = target
        talking = sum(sample.answer != NO_FEEDBACK_ANSWER for member in members for sample in by_session[member.key])
        log(f"wrote {len(records)} {split} window samples ({talking} with feedback) from {len(members)} sessions "
            f"to {target}")
    return written

