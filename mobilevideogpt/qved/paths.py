"""How QVED's files name one video, normalised so the names can be compared.

Three spellings of the same video occur in QVED's JSON files:
- `manifest.json` keys: `dataset/<class>/<file>.mp4` (the path as downloaded, relative to the project root);
- `ground_truth.json` `video_path`: often `./<class>/<file>.mp4` (relative to the dataset folder);
- `qved_*.json` `video`: `dataset/<class>/<file>.mp4` (see `data.paths.resolve_annotation_video`).
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
