"""Running a model over a split file, one JSON line per sample, resumable.

A split file is a `qved_*.json` list of `{"video", "conversations": [human, gpt, ...]}` records, read with the
parser training uses (`processing.parse_record`): the first human turn is the prompt, the first assistant turn
after it the reference. Video paths resolve as in training (`resolve_annotation_video`).

`predictions.jsonl` gets one line per finished sample, appended and flushed as it goes, so an interrupted
run loses at most the sample in progress. A rerun skips every sample already recorded (failed ones too,
unless `retry_failed`); the last line recorded for a sample wins. `run_config.json` beside it records the
model and generation settings; a rerun with different settings is refused rather than mixing results.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data.paths import resolve_annotation_video
from ..data.video import VideoDecodeError
from ..processing import AnnotationError, parse_record

logger = logging.getLogger(__name__)

PREDICTIONS_FILE = "predictions.jsonl"
RUN_CONFIG_FILE = "run_config.json"
# Settings that change predictions: a resumed run must use the same ones.
RESUME_KEYS = (
    "base",
    "checkpoint",
    "checkpoint_marker",
    "split",
    "max_new_tokens",
    "temperature",
    "top_p",
    "seed",
    "system_prompt",
)


class EvaluationError(RuntimeError):
    """The evaluation cannot run as asked; the message says what to change."""


@dataclass(frozen=True)
class EvalSample:
    id: str  # "<index in the split file>:<video as written there>"
    index: int
    video: str
    video_path: Path | None
    prompt: str | None
    reference: str | None
    problem: str | None = None  # why the record cannot be evaluated (recorded as a failure)


def load_split(path: str | os.PathLike) -> list[EvalSample]:
    """The samples of a split file; unusable records become samples with a `problem`."""
    split = Path(path)
    if not split.is_file():
        raise EvaluationError(
            f"split file {split} not found; create the splits with `python utils/qved_from_fine_labels.py "
            "--val-ratio 0.2 --test-ratio 0.2` or pass another file with --split"
        )
    try:
        records = json.loads(split.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise EvaluationError(f"cannot read split file {split}: {err}") from err
    if not isinstance(records, list):
        raise EvaluationError(f"split file {split} must hold a JSON list of records, not {type(records).__name__}")
    samples = []
    for index, record in enumerate(records):
        video = record.get("video") if isinstance(record, dict) else None
        sample_id = f"{index}:{video}"
        try:
            conversation = parse_record(record)
        except AnnotationError as err:
            samples.append(EvalSample(sample_id, index, str(video), None, None, None, f"bad record: {err}"))
            continue
        if conversation.video is None:
            samples.append(EvalSample(sample_id, index, str(video), None, None, None, "record has no `video` path"))
            continue
        prompt, reference = conversation.first_exchange()
        samples.append(EvalSample(sample_id, index, video, resolve_annotation_video(video, split), prompt, reference))
    return samples


def read_predictions(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """id → last record in a predictions file; unreadable lines (a write cut short) are skipped."""
    records: dict[str, dict[str, Any]] = {}
    file = Path(path)
    if not file.is_file():
        return records
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            records[record["id"]] = record
        except (json.JSONDecodeError, KeyError, TypeError):
            logger.warning("%s line %d is not a complete record; that sample will be run again", file, number)
    return records


def check_run_config(output_dir: Path, config: dict[str, Any], overwrite: bool) -> None:
    """Write `run_config.json`, or compare with the existing one (refusing different settings)."""
    path = output_dir / RUN_CONFIG_FILE
    predictions = output_dir / PREDICTIONS_FILE
    if overwrite:
        predictions.unlink(missing_ok=True)
    elif path.is_file() and predictions.is_file():
        previous = json.loads(path.read_text())
        changed = [k for k in RESUME_KEYS if previous.get(k) != config.get(k)]
        if changed:
            details = ", ".join(f"{k}: {previous.get(k)!r} → {config.get(k)!r}" for k in changed)
            raise EvaluationError(
                f"{predictions} was made with other settings ({details}); pass --overwrite to start over "
                "or --output_dir for a separate run"
            )
    output_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=2))


def record_matches(sample: EvalSample, record: dict[str, Any] | None) -> bool:
    """A stored record belongs to `sample` when it was made for the same video and prompt."""
    return record is not None and record.get("video") == sample.video and record.get("prompt") == sample.prompt


def pending_samples(
    samples: Iterable[EvalSample], done: dict[str, dict[str, Any]], retry_failed: bool
) -> list[EvalSample]:
    """Samples without a record that matches them (video and prompt), plus failed ones with `retry_failed`."""
    todo = []
    for sample in samples:
        record = done.get(sample.id)
        if not record_matches(sample, record) or (retry_failed and record.get("status") != "ok"):
            todo.append(sample)
    return todo


def predict_sample(chat, sample: EvalSample, generation: dict[str, Any]) -> dict[str, Any]:
    """One predictions-file record: the answer and its timings, or the reason the sample failed."""
    record: dict[str, Any] = {
        "id": sample.id,
        "index": sample.index,
        "video": sample.video,
        "prompt": sample.prompt,
        "reference": sample.reference,
    }
    if sample.problem is not None:
        return {**record, "status": "failed", "error": sample.problem}
    try:
        result = chat.answer(sample.video_path, sample.prompt, **generation)
    except VideoDecodeError as err:
        return {**record, "status": "failed", "error": str(err)}
    return {
        **record,
        "status": "ok",
        "prediction": result.text,
        "num_new_tokens": result.num_new_tokens,
        "finish_reason": result.finish_reason,
        "timings": result.timings.to_dict(),
    }


def run_predictions(
    chat,
    samples: list[EvalSample],
    output_dir: Path,
    generation: dict[str, Any],
    retry_failed: bool = False,
    progress: bool = True,
    label: str = "",
) -> tuple[int, int]:
    """Predict every pending sample into `output_dir/predictions.jsonl`. Returns (run now, skipped as done)."""
    from tqdm.auto import tqdm

    path = output_dir / PREDICTIONS_FILE
    done = read_predictions(path)
    todo = pending_samples(samples, done, retry_failed)
    if path.is_file() and path.stat().st_size and not _ends_with_newline(path):
        # The last write was cut short: start the next record on its own line.
        with open(path, "a", encoding="utf-8") as handle:
            handle.write("\n")
    failed = 0
    with (
        open(path, "a", encoding="utf-8") as handle,
        tqdm(total=len(todo), desc=label or "evaluating", unit="video", disable=not progress) as bar,
    ):
        for sample in todo:
            record = predict_sample(chat, sample, generation)
            failed += record["status"] != "ok"
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            handle.flush()
            bar.set_postfix(failed=failed)
            bar.update()
    return len(todo), len(samples) - len(todo)


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as handle:
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) == b"\n"
