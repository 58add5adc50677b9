"""Dataset registry: the names `--dataset_use` accepts, and their resolution to annotation files.

Each name maps to a list of `{"annotation_path"}` entries: annotation JSONs (lists of records with `video` and
`conversations`), relative to the project root (the directory training runs from). Relative `video` paths inside
an annotation file follow one rule everywhere (`data.paths.resolve_annotation_video`): the guide's
`dataset/<class>/<file>.mp4` is relative to the parent of the annotation file's folder, the published
`<class>/<file>.mp4` to the folder itself.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

QVED_TRAIN = {"annotation_path": "dataset/qved_train.json"}
QVED_VAL = {"annotation_path": "dataset/qved_val.json"}
QVED_TEST = {"annotation_path": "dataset/qved_test.json"}

# The published instruction-tuning mix (public video instruction sets) is not part of this project; the list
# starts empty and QVED joins it, so `--dataset_use MobileGPT` trains on QVED as the guide describes.
_mobilegpt_datasets: list[dict[str, str]] = []

# Auto-include QVED if present (checked relative to the working directory at import, as the guide documents)
if os.path.exists(QVED_TRAIN["annotation_path"]):
    _mobilegpt_datasets.append(QVED_TRAIN)

DataConfig: dict[str, list[dict[str, str]]] = {
    "MobileGPT": _mobilegpt_datasets,
    "QVED": [QVED_TRAIN],
    "QVED_TRAIN": [QVED_TRAIN],
    "QVED_VAL": [QVED_VAL],
    "QVED_TEST": [QVED_TEST],
}

_MISSING_HINTS = {
    QVED_TRAIN["annotation_path"]: "create it with `python utils/qved_from_fine_labels.py`",
    QVED_VAL["annotation_path"]: "create it with `python utils/qved_from_fine_labels.py --val-ratio 0.1`",
    QVED_TEST["annotation_path"]: "create it with `python utils/qved_from_fine_labels.py --test-ratio 0.1`",
}


@dataclass(frozen=True)
class DatasetEntry:
    """One resolved annotation file."""

    name: str
    annotation_path: Path


def _absolute(path: str | os.PathLike, root: Path) -> Path:
    path = Path(path).expanduser()
    return path if path.is_absolute() else root / path


def resolve_datasets(
    spec: str | Sequence[str],
    root: str | os.PathLike | None = None,
    registry: Mapping[str, Sequence[Mapping[str, str]]] | None = None,
) -> list[DatasetEntry]:
    """Resolves `"QVED_TRAIN,QVED_VAL"` (registry names and/or paths to `.json` files) to existing annotation files.

    Relative annotation paths resolve against `root` (default: the current directory). A file named twice is kept once. Raises `ValueError` for an unknown
    name (listing the valid ones) or an empty selection, `FileNotFoundError` for a missing annotation file.
    """
    registry = DataConfig if registry is None else registry
    root = Path(root if root is not None else os.getcwd()).expanduser().resolve()
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    names = [item.strip() for item in items if item.strip()]
    if not names:
        raise ValueError(
            f"no dataset given; use one or more of {', '.join(sorted(registry))} or a path to a .json file"
        )

    entries: list[DatasetEntry] = []
    for name in names:
        if name in registry:
            if not registry[name]:
                raise ValueError(
                    f"dataset {name!r} is empty: it includes QVED only when {QVED_TRAIN['annotation_path']} exists "
                    f"in the directory training starts from (now {os.getcwd()}). Run from the project root, or use "
                    "--dataset_use QVED_TRAIN."
                )
            candidates = [(name, item["annotation_path"]) for item in registry[name]]
        elif name.endswith(".json") or os.path.sep in name or "/" in name:
            candidates = [(name, name)]
        else:
            raise ValueError(
                f"unknown dataset {name!r}; valid names: {', '.join(sorted(registry))} (or a path to a .json file)"
            )
        for label, annotation in candidates:
            annotation_path = _absolute(annotation, root)
            if not annotation_path.is_file():
                hint = _MISSING_HINTS.get(str(annotation), "check the path")
                raise FileNotFoundError(f"annotation file for dataset {label!r} not found: {annotation_path}; {hint}")
            entry = DatasetEntry(label, annotation_path)
            if all(e.annotation_path != entry.annotation_path for e in entries):
                entries.append(entry)
    return entries
