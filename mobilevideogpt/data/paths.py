"""Where the `video` of an annotation record lives on disk.

Two spellings occur: `dataset/<class>/<file>.mp4` in the QVED guide's annotation files (relative to the parent of
the folder holding the annotation file, i.e. the project root) and `<class>/<file>.mp4` in the published
instruction files (relative to that folder).
"""

from __future__ import annotations

import os
from pathlib import Path


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
