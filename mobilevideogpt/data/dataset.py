"""Lazy supervised dataset: annotation records → token ids, labels and the video's two frame stacks.

Annotations are read once at construction with the one record parser (`processing.parse_record`); tokenization
and video decoding happen per item. Nothing unusable stops training: a record the parser rejects is skipped at
construction, and a sample whose video fails to decode, or whose prompt plus visual tokens exceed
`model_max_length`, is skipped when it is first met and another sample is returned in its place. Every skip is
logged with the file and record and counted in `skipped`, by reason.

Skip counts are per process: with DataLoader workers each worker counts (and warns about) the samples it hit,
and the main process's `skipped` only holds the records dropped at construction. The warnings in the log are
the complete record.
"""

from __future__ import annotations

import json
import logging
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from mobilevideogpt.config import DatasetEntry
from mobilevideogpt.constants import DEFAULT_SYSTEM_PROMPT, IGNORE_INDEX, IMAGE_SIZE, IMAGE_TOKEN_INDEX, NUM_FRAMES
from mobilevideogpt.data.paths import resolve_annotation_video
from mobilevideogpt.processing import NO_ANSWER, NO_CONVERSATIONS, AnnotationError, parse_record, tokenize_segments

logger = logging.getLogger(__name__)

# Skip reasons, as keys of `SupervisedVideoDataset.skipped` (record-level ones come from `processing`).
VIDEO_ERROR = "video_error"
TOO_LONG = "too_long"
_REASON_TEXT = {NO_CONVERSATIONS: "no `conversations`", NO_ANSWER: "no user question with an answer"}


class SampleTooLongError(ValueError):
    """The prompt plus the visual tokens leave no room for a single answer token."""


class _SkipSample(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


def truncate_sample(
    input_ids: list[int], labels: list[int], model_max_length: int, num_visual_tokens: int
) -> tuple[list[int], list[int]]:
    """Cuts the tail so that the sequence the LLM sees fits in `model_max_length`.

    The LLM length counts each `IMAGE_TOKEN_INDEX` as `num_visual_tokens`. Only text after the visual span and
    after the first answer's start may go; raises `SampleTooLongError` when not even one answer token fits.
    """
    placeholders = [i for i, t in enumerate(input_ids) if t == IMAGE_TOKEN_INDEX]
    extra = len(placeholders) * (num_visual_tokens - 1)
    if len(input_ids) + extra <= model_max_length:
        return input_ids, labels
    first_answer = next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), None)
    if first_answer is None:
        raise ValueError("the sample has no supervised (answer) tokens")
    keep = model_max_length - extra
    needed = max(first_answer + 1, placeholders[-1] + 1 if placeholders else 0)
    if keep < needed:
        raise SampleTooLongError(
            f"the prompt and first answer token need {needed + extra} tokens ({len(placeholders)} video × "
            f"{num_visual_tokens} visual tokens included), more than model_max_length={model_max_length}"
        )
    return input_ids[:keep], labels[:keep]


@dataclass(frozen=True)
class _Record:
    segments: list[tuple[str, bool]]  # rendered once at construction (`Conversation.segments`)
    video: str | None
    source: str  # "file.json#index", for messages


def _default_video_loader():
    # Imported at call time: the decoder module pulls in decord/OpenCV, which the dataset itself does not need.
    from mobilevideogpt.data.video import load_video_inputs

    return load_video_inputs


class SupervisedVideoDataset(Dataset):
    """Conversation samples with their videos, for supervised finetuning.

    Each item: `input_ids` (L,) long, `labels` (L,) long (`IGNORE_INDEX` except answers), and for video samples
    `images` (T, 3, H, W) float (VideoMamba preprocessing) and `context_images` (T, 3, H, W) float (CLIP
    preprocessing), T = `num_frames`, H = W = `image_size`. A video sample's ids hold exactly one
    `IMAGE_TOKEN_INDEX`, which the model replaces by `num_visual_tokens` embeddings.

    Args:
        entries: resolved annotation files (`config.resolve_datasets`), or mappings with `annotation_path` and
            relative `video` paths resolve with `data.paths.resolve_annotation_video`.
        video_loader: `f(path, num_frames=..., image_size=...)` returning an object with `frames` and
            `context_frames`; default `mobilevideogpt.data.video.load_video_inputs`. `OSError` / `RuntimeError`
            (which includes the decoder's `VideoDecodeError`) mean "this video is unusable".
        seed: fixes which sample replaces a skipped one (same choice in every epoch and worker).
        max_load_attempts: samples tried per item before giving up with an error.
    """

    def __init__(
        self,
        entries: Sequence[DatasetEntry | Mapping],
        tokenizer,
        *,
        num_visual_tokens: int,
        model_max_length: int = 2048,
        num_frames: int = NUM_FRAMES,
        image_size: int = IMAGE_SIZE,
        system_prompt: str = DEFAULT_SYSTEM_PROMPT,
        video_loader: Callable | None = None,
        seed: int = 0,
        max_load_attempts: int = 32,
    ):
        if model_max_length <= 0 or num_visual_tokens <= 0 or max_load_attempts <= 0:
            raise ValueError("model_max_length, num_visual_tokens and max_load_attempts must be positive")
        self.tokenizer = tokenizer
        self.model_max_length = model_max_length
        self.num_visual_tokens = num_visual_tokens
        self.num_frames = num_frames
        self.image_size = image_size
        self.system_prompt = system_prompt
        self.video_loader = video_loader
        self.seed = seed
        self.max_load_attempts = max_load_attempts
        self.skipped: Counter[str] = Counter()
        self._bad: dict[int, str] = {}  # index → skip reason, known in this process
        self.records: list[_Record] = []
        self._problems: list[str] = []  # record-level problems, for the error when nothing is usable
        self.num_records_read = 0
        for entry in entries:
            self._read_annotations(entry)
        if not self.records:
            raise ValueError(
                f"no usable samples in {', '.join(str(_annotation_path(e)) for e in entries)}"
                + (f": {'; '.join(self._problems[:3])}" if self._problems else "")
            )
        if model_max_length <= num_visual_tokens and any(r.video is not None for r in self.records):
            raise ValueError(
                f"model_max_length={model_max_length} cannot hold one video's {num_visual_tokens} visual tokens plus "
                "its prompt (the LLM sequence length counts the visual tokens), so every video sample would be "
                f"skipped; use at least {num_visual_tokens + 128}"
            )

    def _read_annotations(self, entry: DatasetEntry | Mapping) -> None:
        annotation_path = _annotation_path(entry)
        try:
            with open(annotation_path, encoding="utf-8") as f:
                data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{annotation_path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
        except OSError as e:
            raise FileNotFoundError(f"cannot read annotation file {annotation_path}: {e.strerror}") from None
        if not isinstance(data, list):
            raise ValueError(f"{annotation_path}: expected a JSON list of records, got {type(data).__name__}")

        dropped: dict[str, list[tuple[int, str]]] = defaultdict(list)
        for index, raw in enumerate(data):
            try:
                conversation = parse_record(raw)
            except AnnotationError as err:
                dropped[err.reason].append((index, str(err)))
                continue
            video = conversation.video
            video_path = str(resolve_annotation_video(video, annotation_path)) if video is not None else None
            segments = conversation.segments(self.system_prompt)
            self.records.append(_Record(segments, video_path, f"{annotation_path}#{index}"))
        self.num_records_read += len(data)
        for reason, problems in dropped.items():
            self.skipped[reason] += len(problems)
            indices = [index for index, _ in problems]
            self._problems += [f"{annotation_path}, record {index}: {message}" for index, message in problems]
            logger.warning(
                "%s: skipped %d record(s) with %s (indices %s%s; first: %s)",
                annotation_path,
                len(problems),
                _REASON_TEXT.get(reason, "an unusable annotation"),
                indices[:10],
                " ..." if len(indices) > 10 else "",
                problems[0][1],
            )

    def __len__(self) -> int:
        return len(self.records)

    def skip_summary(self) -> str:
        """One line: how many samples this process skipped, by reason."""
        total = sum(self.skipped.values())
        reasons = ", ".join(f"{reason}: {n}" for reason, n in sorted(self.skipped.items()))
        return f"{total} of {self.num_records_read} samples skipped in this process" + (
            f" ({reasons})" if total else ""
        )

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < len(self.records):
            raise IndexError(f"index {index} out of range for {len(self.records)} samples")
        attempts = 0
        for candidate in self._candidates(index):
            if candidate in self._bad:
                continue
            attempts += 1
            try:
                return self._build(candidate)
            except _SkipSample as skip:
                self._mark_bad(candidate, skip)
            if attempts >= self.max_load_attempts:
                raise RuntimeError(
                    f"{attempts} samples in a row could not be used (last: {self.records[candidate].source}); "
                    f"{self.skip_summary()}. {self._fix_hint()}"
                )
        raise RuntimeError(
            f"none of the {len(self.records)} samples can be used; {self.skip_summary()}. {self._fix_hint()}"
        )

    def _fix_hint(self) -> str:
        hints = []
        if self.skipped[VIDEO_ERROR]:
            hints.append("Check the videos with `bash scripts/verify_qved_setup.sh`.")
        if self.skipped[TOO_LONG]:
            hints.append(f"Raise model_max_length (now {self.model_max_length}) or shorten the prompts.")
        return " ".join(hints)

    def _candidates(self, index: int):
        """`index`, then every other index in an order fixed by (seed, index)."""
        yield index
        order = [i for i in range(len(self.records)) if i != index]
        random.Random(f"{self.seed}:{index}").shuffle(order)
        yield from order

    def _mark_bad(self, index: int, skip: _SkipSample) -> None:
        self._bad[index] = skip.reason
        self.skipped[skip.reason] += 1
        record = self.records[index]
        logger.warning("skipping sample %s (%s): %s", record.source, record.video or "no video", skip)

    def _build(self, index: int) -> dict[str, torch.Tensor]:
        record = self.records[index]
        has_video = record.video is not None
        input_ids, labels = tokenize_segments(record.segments, self.tokenizer)
        try:
            input_ids, labels = truncate_sample(input_ids, labels, self.model_max_length, self.num_visual_tokens)
        except SampleTooLongError as e:
            raise _SkipSample(TOO_LONG, str(e)) from None
        item = {
            "input_ids": torch.tensor(input_ids, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
        }
        if has_video:
            loader = self.video_loader or _default_video_loader()
            try:
                video = loader(record.video, num_frames=self.num_frames, image_size=self.image_size)
            except (OSError, RuntimeError) as e:
                raise _SkipSample(VIDEO_ERROR, f"{type(e).__name__}: {e}") from None
            expected = (self.num_frames, 3, self.image_size, self.image_size)
            for name in ("frames", "context_frames"):
                if tuple(getattr(video, name).shape) != expected:
                    raise ValueError(
                        f"video loader returned {name} of shape {tuple(getattr(video, name).shape)} for "
                        f"{record.video}, expected {expected}"
                    )
            item["images"] = video.frames
            item["context_images"] = video.context_frames
        return item


def _annotation_path(entry: DatasetEntry | Mapping) -> Path:
    return Path(entry["annotation_path"] if isinstance(entry, Mapping) else entry.annotation_path)
