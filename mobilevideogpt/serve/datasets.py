"""What the dataset browser shows: split files and evaluation predictions found under the allowed directories.

A split file is a `qved_*.json` annotation list; its samples (video, prompt, reference answer) are read with
the evaluation's reader, so the browser and `mvgpt evaluate` agree on what a sample is. An evaluation's
`predictions.jsonl` supplies the model's answer for a sample when its record was made for the same video
and prompt. Every file the browser opens, videos included, must lie inside an allowed directory.
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path
from typing import Any

from ..evaluation.predictions import EvalSample, EvaluationError, load_split, read_predictions, record_matches
from .paths import AllowedRoots, PathNotAllowed

SPLIT_PATTERN = "qved_*.json"
PREDICTIONS_PATTERN = "predictions*.jsonl"
# An evaluation writes results/eval/<split>/<comparison>/<label>/predictions.jsonl: six levels below a root.
MAX_DEPTH = 6
MAX_DIRECTORIES = 20_000


class DatasetError(ValueError):
    """A split, predictions file or video cannot be shown; the message says why."""


def find_files(roots: AllowedRoots, pattern: str) -> list[Path]:
    """Files named like `pattern` under the allowed directories (hidden folders skipped, depth bounded)."""
    found: list[Path] = []
    visited = 0
    for root in roots.roots:
        for folder, subfolders, files in os.walk(root):
            visited += 1
            depth = len(Path(folder).relative_to(root).parts)
            subfolders[:] = sorted(d for d in subfolders if not d.startswith(".")) if depth < MAX_DEPTH else []
            found += [Path(folder) / f for f in sorted(files) if fnmatch.fnmatch(f, pattern)]
            if visited >= MAX_DIRECTORIES:
                break
    return [path for path in dict.fromkeys(found) if roots.contains(path)]


def display_name(path: Path, roots: AllowedRoots) -> str:
    """`<root folder name>/<path inside it>`: short, and the same on every machine."""
    real = path.resolve()
    for root in roots.roots:
        if real.is_relative_to(root):
            return f"{root.name}/{real.relative_to(root).as_posix()}"
    return str(path)


def open_split(path: str | os.PathLike, roots: AllowedRoots) -> list[EvalSample]:
    try:
        return load_split(roots.resolve(path))
    except (PathNotAllowed, EvaluationError) as err:
        raise DatasetError(str(err)) from err


def open_predictions(path: str | os.PathLike, roots: AllowedRoots) -> dict[str, dict[str, Any]]:
    try:
        return read_predictions(roots.resolve(path))
    except (PathNotAllowed, OSError, UnicodeDecodeError) as err:
        raise DatasetError(f"cannot read predictions {path}: {err}") from err


def sample_video(sample: EvalSample, roots: AllowedRoots) -> Path:
    """The sample's video file, when it exists inside an allowed directory."""
    if sample.problem is not None or sample.video_path is None:
        raise DatasetError(f"sample {sample.index} cannot be shown: {sample.problem}")
    try:
        path = roots.resolve(sample.video_path)
    except PathNotAllowed as err:
        raise DatasetError(str(err)) from err
    if not path.is_file():
        raise DatasetError(f"video {sample.video} of sample {sample.index} not found (looked for {sample.video_path})")
    return path


def recorded_prediction(sample: EvalSample, predictions: dict[str, dict[str, Any]]) -> str | None:
    """The evaluation's answer for `sample` ("failed: …" for a failed one); None when it has no matching record."""
    record = predictions.get(sample.id)
    if not record_matches(sample, record):
        return None
    if record.get("status") != "ok":
        return f"failed: {record.get('error', 'no reason recorded')}"
    return record.get("prediction") or ""


def exercise_of(sample: EvalSample) -> str:
    """The class folder of the sample's video (`dataset/squats/x.mp4` → "squats")."""
    return Path(sample.video).parent.name
