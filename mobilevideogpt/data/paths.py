"""How QVED files name videos, and how those names become files on disk.

Three spellings of the same video occur in QVED's JSON files:
- `manifest.json` keys: `dataset/<class>/<file>.mp4` (the path as downloaded, relative to the project root);
- `ground_truth.json` `video_path`: often `./<class>/<file>.mp4` (relative to the dataset folder);
- `qved_*.json` `video`: `dataset/<class>/<file>.mp4` in the user's guide (relative to the parent of the folder
  holding the annotation file), `<class>/<file>.mp4` in the published code (relative to that folder).
Everything is normalised to the dataset-relative form `<class>/<file>.mp4` before comparing.
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path

DATASET_PREFIX = "dataset"


def dataset_relpath(path: str, dataset_dir: str | os.PathLike | None = None) -> str | None:
    """Normalise a video path to the dataset-relative POSIX form `<class>/<file>.mp4`.

    Strips whitespace, `./` prefixes and a leading `dataset/` (or `<dataset folder name>/`) component; an
    absolute path is accepted when it lies inside `dataset_dir`. Returns None when the path is empty or would
    escape the dataset folder (`..`, or absolute outside it), so callers can report it.
    """
    text = path.strip().replace("\\", "/")
    if not text:
        return None
    root = Path(dataset_dir).resolve() if dataset_dir is not None else None
    if text.startswith("/"):
        if root is None:
            return None
        try:
            text = Path(text).resolve().relative_to(root).as_posix()
        except ValueError:
            return None
    normalised = posixpath.normpath(text)
    if normalised in (".", "") or normalised == ".." or normalised.startswith("../"):
        return None
    prefixes = {DATASET_PREFIX}
    if root is not None and root.name:
        prefixes.add(root.name)
    first, _, rest = normalised.partition("/")
    if first in prefixes and rest:
        normalised = rest
    return normalised


def resolve_annotation_video(video: str, annotation_path: str | os.PathLike) -> Path:
    """The file a `qved_*.json` `video` entry points at.

    The guide's form (`dataset/<class>/<file>.mp4`) is relative to the parent of the folder holding the
    annotation file (the project root); the published form (`<class>/<file>.mp4`) is relative to that folder.
    The first candidate that exists wins; if none exists the guide's reading is returned (for error messages).
    """
    candidate = Path(video)
    if candidate.is_absolute():
        return candidate
    annotation_dir = Path(annotation_path).resolve().parent
    guide_form = annotation_dir.parent / video
    for option in (guide_form, annotation_dir / video):
        if option.is_file():
            return option
    return guide_form
