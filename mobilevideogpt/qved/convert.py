"""QVED fine-grained labels → Mobile-VideoGPT conversation annotations (`qved_{train,val,test}.json`).

Inputs: `ground_truth.json` (QEVD records: `video_path`, `labels`, `labels_descriptive`, …) and
`manifest.json` (`"dataset/<class>/<file>.mp4"` → class). One output record per usable label record:

    {"video": "dataset/<class>/<file>.mp4",
     "conversations": [{"from": "human", "value": "Analyze this <exercise> video and provide corrective feedback."},
                       {"from": "gpt", "value": <answer>}],
     "split": "train"}

- `video` is relative to the parent of the folder holding the annotation file (the project root in the
  guide's layout), so `dataset/qved_train.json` names `dataset/<class>/<file>.mp4`.
- exercise = the class folder name with underscores as spaces.
- answer = `labels_descriptive` when it has text, else `labels` (the published rule, which the guide's example
  "tricep stretch (right arm) - User is holding the stretch" follows); a list contributes all its non-empty
  strings, one per line. A record with neither is skipped (the published code trained on a placeholder
  "No feedback available." instead).
- records are matched to manifest entries by their dataset-relative path (`./`, `dataset/` prefixes
  accepted), never by basename alone: a path that is only a suffix of manifest entries (e.g. a bare file
  name) is accepted only when exactly one entry matches, so duplicate names across classes cannot be confused.
- splits (optional) are deterministic for a seed, stratified by exercise, and keep every copy of one source
  video (the original and augmented `<stem>_<n>.mp4` copies) in the same split.
"""

from __future__ import annotations

import json
import logging
import math
import os
import posixpath
import random
import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import SPLIT_FILES, SPLITS, exercise_name, exercise_prompt
from .paths import dataset_relpath

DEFAULT_SEED = 42
logger = logging.getLogger(__name__)
# `<stem>_<n>` (repeatable) marks an augmented copy of `<stem>`; all copies form one split group.
_AUGMENTED_SUFFIX = re.compile(r"(_\d+)+$")


class QvedInputError(Exception):
    """An input file is missing or unusable as a whole (not just one of its records)."""


@dataclass(frozen=True)
class QvedSample:
    """One usable label record, matched to its video."""

    relpath: str  # "<class>/<file>.mp4", relative to the dataset folder
    exercise_class: str
    answer: str

    @property
    def exercise(self) -> str:
        return exercise_name(self.exercise_class)

    def to_record(self, video: str, split: str, generic_prompt: bool = False) -> dict[str, Any]:
        """The annotation record; `generic_prompt` asks without naming the exercise (the answer still names it)."""
        return {
            "video": video,
            "conversations": [
                {"from": "human", "value": exercise_prompt(None if generic_prompt else self.exercise)},
                {"from": "gpt", "value": self.answer},
            ],
            "split": split,
        }


@dataclass
class ConversionResult:
    splits: dict[str, list[dict[str, Any]]]
    total_records: int
    kept: int
    warnings: list[str] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)

    @property
    def skipped(self) -> int:
        return self.total_records - self.kept


def load_json(path: str | os.PathLike, what: str) -> Any:
    """Parse a JSON file, turning every failure into one `QvedInputError` line."""
    path = Path(path)
    if not path.is_file():
        raise QvedInputError(f"{what} not found: {path}")
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as exc:
        raise QvedInputError(f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise QvedInputError(f"cannot read {path}: {exc}") from exc


def feedback_text(record: dict[str, Any]) -> str:
    """The answer for a label record: `labels_descriptive`, else `labels`; "" when neither has text."""
    for key in ("labels_descriptive", "labels"):
        value = record.get(key)
        items = [value] if isinstance(value, str) else value if isinstance(value, list) else []
        lines = [item.strip() for item in items if isinstance(item, str) and item.strip()]
        if lines:
            return "\n".join(lines)
    return ""


def manifest_classes(manifest: Any, manifest_path: Path, dataset_dir: Path) -> tuple[dict[str, str], list[str]]:
    """Manifest → {"<class>/<file>.mp4": class}, plus warnings for entries that cannot be used.

    Values are class names; object values (an old augmented-entry format) fall back to the path's folder.
    """
    if not isinstance(manifest, dict):
        raise QvedInputError(
            f"{manifest_path} must be a JSON object mapping 'dataset/<class>/<file>.mp4' to the class name, "
            f"got a JSON {type(manifest).__name__}"
        )
    classes: dict[str, str] = {}
    warnings: list[str] = []
    for key, value in manifest.items():
        relpath = dataset_relpath(key, dataset_dir)
        if relpath is None or "/" not in relpath:
            warnings.append(
                f"{manifest_path.name}: entry {key!r} is not a '<class>/<file>' path inside the dataset; ignored"
            )
            continue
        folder = relpath.split("/", 1)[0]
        exercise_class = value.strip() if isinstance(value, str) and value.strip() else folder
        if exercise_class != folder:
            warnings.append(
                f"{manifest_path.name}: entry {key!r} says class {exercise_class!r} but the file is in folder "
                f"{folder!r}; ignored"
            )
            continue
        classes[relpath] = exercise_class
    return classes, warnings


def _match_manifest(relpath: str, classes: dict[str, str]) -> tuple[str | None, str]:
    """The manifest entry for a record path: exact match, else a unique component-wise suffix match."""
    if relpath in classes:
        return relpath, ""
    candidates = sorted(entry for entry in classes if entry.endswith("/" + relpath) or relpath.endswith("/" + entry))
    if len(candidates) == 1:
        return candidates[0], ""
    if candidates:
        shown = ", ".join(candidates[:4]) + (", ..." if len(candidates) > 4 else "")
        return None, f"ambiguous, matches {len(candidates)} manifest entries ({shown})"
    return None, "video not in manifest.json"


def collect_samples(
    ground_truth: Any, classes: dict[str, str], dataset_dir: Path, ground_truth_path: Path
) -> tuple[list[QvedSample], list[str]]:
    """Turn label records into samples; every unusable record yields one warning and is skipped."""
    if not isinstance(ground_truth, list):
        raise QvedInputError(
            f"{ground_truth_path} must be a JSON list of label records, got a JSON {type(ground_truth).__name__}"
        )
    samples: list[QvedSample] = []
    seen: set[tuple[str, str]] = set()
    warnings: list[str] = []
    name = ground_truth_path.name
    for number, record in enumerate(ground_truth):
        if not isinstance(record, dict):
            warnings.append(f"{name} record {number}: not a JSON object; skipped")
            continue
        raw_path = record.get("video_path")
        where = f"{name} record {number} ({raw_path!r})"
        if not isinstance(raw_path, str) or not raw_path.strip():
            warnings.append(f"{name} record {number}: no 'video_path'; skipped")
            continue
        relpath = dataset_relpath(raw_path, dataset_dir)
        if relpath is None:
            warnings.append(f"{where}: path escapes the dataset folder {dataset_dir}; skipped")
            continue
        entry, problem = _match_manifest(relpath, classes)
        if entry is None:
            warnings.append(f"{where}: {problem}; skipped")
            continue
        if not (dataset_dir / entry).is_file():
            warnings.append(f"{where}: video file missing: {dataset_dir / entry}; skipped")
            continue
        answer = feedback_text(record)
        if not answer:
            warnings.append(f"{where}: empty 'labels_descriptive' and 'labels'; skipped")
            continue
        if (entry, answer) in seen:
            warnings.append(f"{where}: duplicate of an earlier record for the same video; skipped")
            continue
        seen.add((entry, answer))
        samples.append(QvedSample(entry, classes[entry], answer))
    return samples, warnings


def source_group(relpath: str) -> tuple[str, str]:
    """(folder, source stem): an original video and its augmented `<stem>_<n>` copies share a group."""
    folder, filename = posixpath.split(relpath)
    stem = posixpath.splitext(filename)[0]
    return folder, _AUGMENTED_SUFFIX.sub("", stem) or stem


def _round_half_up(value: float) -> int:
    return int(math.floor(value + 0.5))


def split_samples(
    samples: list[QvedSample], val_ratio: float = 0.0, test_ratio: float = 0.0, seed: int = DEFAULT_SEED
) -> dict[str, list[QvedSample]]:
    """Assign samples to train/val/test, stratified by exercise, by source-video group.

    Per exercise the sorted groups are shuffled with a seed-derived RNG; round(n·test_ratio) groups go to
    test, round(n·val_ratio) to val, the rest (at least one group) to train. Independent of input order.
    """
    if not (0 <= val_ratio < 1 and 0 <= test_ratio < 1 and val_ratio + test_ratio < 1):
        raise ValueError(
            f"need 0 <= val_ratio, test_ratio and val_ratio + test_ratio < 1, got {val_ratio}, {test_ratio}"
        )
    groups: dict[str, dict[tuple[str, str], list[QvedSample]]] = defaultdict(lambda: defaultdict(list))
    for sample in samples:
        groups[sample.exercise_class][source_group(sample.relpath)].append(sample)
    result: dict[str, list[QvedSample]] = {split: [] for split in SPLITS}
    for exercise_class in sorted(groups):
        keys = sorted(groups[exercise_class])
        random.Random(f"{seed}/{exercise_class}").shuffle(keys)
        n_test = _round_half_up(len(keys) * test_ratio)
        n_val = _round_half_up(len(keys) * val_ratio)
        while n_test + n_val >= len(keys) and n_test + n_val > 0:
            if n_val >= n_test:
                n_val -= 1
            else:
                n_test -= 1
        assignment = {"test": keys[:n_test], "val": keys[n_test : n_test + n_val], "train": keys[n_test + n_val :]}
        for split, split_keys in assignment.items():
            for key in split_keys:
                result[split].extend(groups[exercise_class][key])
    for split in SPLITS:
        result[split].sort(key=lambda s: (s.relpath, s.answer))
    return result


def _draw(seed: int, relpath: str) -> float:
    """A number in [0, 1) fixed by (seed, video): which training prompts are generic does not depend on order."""
    return random.Random(f"{seed}/generic/{relpath}").random()


def write_json(path: Path, data: Any) -> None:
    """Write atomically (temp file + rename) so an interrupted run never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, ensure_ascii=False)
        handle.write("\n")
    os.replace(temporary, path)


def convert(
    dataset_dir: str | os.PathLike = "dataset",
    ground_truth_path: str | os.PathLike | None = None,
    manifest_path: str | os.PathLike | None = None,
    output_dir: str | os.PathLike | None = None,
    val_ratio: float = 0.0,
    test_ratio: float = 0.0,
    seed: int = DEFAULT_SEED,
    log: Callable[[str], None] = logger.info,
    warn: Callable[[str], None] = logger.warning,
    generic_prompt_ratio: float = 0.0,
) -> ConversionResult:
    """Read the label and manifest files, write `qved_train.json` (+ `qved_val/test.json` with ratios).

    `generic_prompt_ratio` of the training records (chosen per video, fixed by `seed`) ask the generic question
    that names no exercise, so a model learns to tell the exercise from the video, not from the prompt.

    Raises:
        QvedInputError: a missing/malformed input file, or no usable record at all.
    """
    dataset_dir = Path(dataset_dir)
    if not dataset_dir.is_dir():
        raise QvedInputError(f"dataset folder not found: {dataset_dir}")
    dataset_dir = dataset_dir.resolve()
    ground_truth_path = Path(ground_truth_path) if ground_truth_path else dataset_dir / "ground_truth.json"
    manifest_path = Path(manifest_path) if manifest_path else dataset_dir / "manifest.json"
    output_dir = Path(output_dir).resolve() if output_dir else dataset_dir

    classes, manifest_warnings = manifest_classes(load_json(manifest_path, "manifest"), manifest_path, dataset_dir)
    ground_truth = load_json(ground_truth_path, "ground-truth labels")
    samples, record_warnings = collect_samples(ground_truth, classes, dataset_dir, ground_truth_path)
    warnings = manifest_warnings + record_warnings
    for message in warnings:
        warn(message)
    total = len(ground_truth)
    if not samples:
        raise QvedInputError(f"none of the {total} records in {ground_truth_path} is usable (see warnings above)")

    by_split = split_samples(samples, val_ratio, test_ratio, seed)
    wanted = ["train"] + [split for split, ratio in (("val", val_ratio), ("test", test_ratio)) if ratio > 0]
    result = ConversionResult(splits={}, total_records=total, kept=len(samples), warnings=warnings)
    for split in wanted:
        records = [
            sample.to_record(
                Path(os.path.relpath(dataset_dir / sample.relpath, output_dir.parent)).as_posix(),
                split,
                generic_prompt=split == "train" and _draw(seed, sample.relpath) < generic_prompt_ratio,
            )
            for sample in by_split[split]
        ]
        target = output_dir / SPLIT_FILES[split]
        write_json(target, records)
        result.splits[split] = records
        result.written.append(target)
    for split in SPLITS:
        stale = output_dir / SPLIT_FILES[split]
        if split not in wanted and stale.exists():
            warn(f"{stale} was not rewritten by this run (no --{split}-ratio); delete it if it is stale")

    unlabeled = len(set(classes) - {sample.relpath for sample in samples})
    per_class = defaultdict(int)
    for sample in samples:
        per_class[sample.exercise_class] += 1
    log(f"kept {result.kept} of {total} records, skipped {result.skipped}")
    log("per exercise: " + ", ".join(f"{name} {count}" for name, count in sorted(per_class.items())))
    if unlabeled:
        log(f"{unlabeled} manifest videos have no usable label record")
    for split, path in zip(wanted, result.written, strict=True):
        log(f"wrote {len(result.splits[split])} {split} samples to {path}")
    return result
