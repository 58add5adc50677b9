"""Lazy supervised dataset: annotation records → token ids, labels and the video's two frame stacks.

Annotations are read and tokenized once at construction with the one record parser (`processing.parse_record`);
video decoding happens per item. Nothing unusable stops training: a record the parser rejects, or whose prompt
plus visual tokens leave no room for its answer within `model_max_length`, is skipped at construction; a sample
whose answer is too long is cut to fit (and counted in `truncated`); a sample whose video fails to decode is
skipped when it is first met and another sample is returned in its place. Every skip is logged with the file
and record and counted in `skipped`, by reason; when nothing at all is usable, the error says why and what to do.

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
MAX_LISTED_SKIPS = 5  # per process: skipped samples logged one by one, the rest only counted
_REASON_TEXT = {NO_CONVERSATIONS: "no `conversations`", NO_ANSWER: "no user question with an answer"}


class SampleTooLongError(ValueError):
    """The prompt plus the visual tokens leave no room for a single answer token (`needed`: the least length)."""

    def __init__(self, message: str, needed: int):
        super().__init__(message)
        self.needed = needed


class UnusableDataError(RuntimeError):
    """No sample can be used (all videos fail to decode, ...); the message says why and what to do."""


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
            f"{num_visual_tokens} visual tokens included), more than model_max_length={model_max_length}",
            needed + extra,
        )
    return input_ids[:keep], labels[:keep]


@dataclass(frozen=True)
class _Record:
    input_ids: list[int]  # tokenized once at construction, already cut to `model_max_length`
    labels: list[int]
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
        length_setting: (name, offset): how messages name the length limit the user sets, whose value is
            `model_max_length - offset` (training sets a text budget; the visual tokens come on top).
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
        length_setting: tuple[str, int] = ("model_max_length", 0),
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
        self.length_setting = length_setting
        self.skipped: Counter[str] = Counter()
        self.truncated = 0  # samples whose answers were cut to fit model_max_length
        self._too_long: list[tuple[str, int]] = []  # (source, least length it needs)
        self._cut: list[tuple[str, int]] = []  # (source, length it needs whole)
        self._bad: dict[int, str] = {}  # index → skip reason, known in this process
        self._last_problem = ""
        self.records: list[_Record] = []
        self._problems: list[str] = []  # record-level problems, for the error when nothing is usable
        self.num_records_read = 0
        for entry in entries:
            self._read_annotations(entry)
        names = ", ".join(str(_annotation_path(e)) for e in entries)
        if not self.records and self._too_long:
            raise UnusableDataError(
                f"every sample of {names} is longer than {self._limit_text()} allows (prompt, video and first answer "
                f"token; the shortest needs {self._setting_value(min(n for _, n in self._too_long))}); raise "
                f"{self.length_setting[0]} to at least {self._setting_value(max(n for _, n in self._too_long))}"
            )
        if not self.records:
            raise ValueError(
                f"no usable samples in {names}" + (f": {'; '.join(self._problems[:3])}" if self._problems else "")
            )
        self._warn_lengths()

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
            source = f"{annotation_path}#{index}"
            input_ids, labels = tokenize_segments(conversation.segments(self.system_prompt), self.tokenizer)
            try:
                cut_ids, cut_labels = truncate_sample(input_ids, labels, self.model_max_length, self.num_visual_tokens)
            except SampleTooLongError as err:
                self._too_long.append((source, err.needed))
                self.skipped[TOO_LONG] += 1
                continue
            if len(cut_ids) < len(input_ids):
                self._cut.append((source, _llm_length(input_ids, self.num_visual_tokens)))
                self.truncated += 1
            self.records.append(_Record(cut_ids, cut_labels, video_path, source))
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

    def _setting_value(self, llm_length: int) -> int:
        """An LLM sequence length, in the units of the length setting the user sets."""
        return llm_length - self.length_setting[1]

    def _limit_text(self) -> str:
        name, _ = self.length_setting
        return f"{name} = {self._setting_value(self.model_max_length)}"

    def _warn_lengths(self) -> None:
        """One warning per kind: samples skipped because even their first answer token does not fit, and samples
        whose answers are cut; each names an example and the setting that keeps them whole."""
        name = self.length_setting[0]
        if self._too_long:
            logger.warning(
                "%d sample(s) skipped: the prompt, video and first answer token do not fit %s (first: %s needs %d); "
                "raise %s to at least %d to keep them",
                len(self._too_long), self._limit_text(), self._too_long[0][0],
                self._setting_value(self._too_long[0][1]), name,
                self._setting_value(max(n for _, n in self._too_long)),
            )
        if self._cut:
            logger.warning(
                "%d sample(s) have answers cut to fit %s (first: %s needs %d); raise %s to at least %d to keep "
                "whole answers",
                len(self._cut), self._limit_text(), self._cut[0][0], self._setting_value(self._cut[0][1]), name,
                self._setting_value(max(n for _, n in self._cut)),
            )

    def __len__(self) -> int:
        return len(self.records)

    def skip_summary(self) -> str:
        """One line: how many samples this process skipped, by reason."""
        total = sum(self.skipped.values())
        reasons = ", ".join(f"{reason}: {n}" for reason, n in sorted(self.skipped.items()) if n)
        return (
            f"{total} of {self.num_records_read} samples skipped in this process"
            + (f" ({reasons})" if total else "")
            + (f"; {self.truncated} answer(s) cut to fit {self.length_setting[0]}" if self.truncated else "")
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
                raise UnusableDataError(
                    f"{attempts} samples in a row could not be used (last: {self.records[candidate].source}: "
                    f"{self._last_problem}); {self.skip_summary()}. {self._fix_hint()}"
                )
        raise UnusableDataError(
            f"none of the {len(self.records)} samples can be used (last: {self._last_problem}); "
            f"{self.skip_summary()}. {self._fix_hint()}"
        )

    def _fix_hint(self) -> str:
        if self.skipped[VIDEO_ERROR]:
            return "Check the videos with `bash scripts/verify_qved_setup.sh`."
        return ""

    def _candidates(self, index: int):
        """`index`, then every other index in an order fixed by (seed, index)."""
        yield index
        order = [i for i in range(len(self.records)) if i != index]
        random.Random(f"{self.seed}:{index}").shuffle(order)
        yield from order

    def _mark_bad(self, index: int, skip: _SkipSample) -> None:
        self._bad[index] = skip.reason
        self._last_problem = str(skip)
        self.skipped[skip.reason] += 1
        record = self.records[index]
        skips = len(self._bad)
        if skips <= MAX_LISTED_SKIPS:
            logger.warning("skipping sample %s (%s): %s", record.source, record.video or "no video", skip)
        if skips == MAX_LISTED_SKIPS:
            logger.warning("further skipped samples are counted, not listed (`mvgpt verify` lists every bad video)")

    def _build(self, index: int) -> dict[str, torch.Tensor]:
        record = self.records[index]
        has_video = record.video is not None
        item = {
            "input_ids": torch.tensor(record.input_ids, dtype=torch.long),
            "labels": torch.tensor(record.labels, dtype=torch.long),
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


def _llm_length(input_ids: list[int], num_visual_tokens: int) -> int:
    """Length of the sequence the LLM sees: each `IMAGE_TOKEN_INDEX` stands for `num_visual_tokens` embeddings."""
    return len(input_ids) + input_ids.count(IMAGE_TOKEN_INDEX) * (num_visual_tokens - 1)


def _annotation_path(entry: DatasetEntry | Mapping) -> Path:
    return Path(entry["annotation_path"] if isinstance(entry, Mapping) else entry.annotation_path)
