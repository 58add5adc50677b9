"""Feedback events and their JSONL log.

One JSON object per line, written (and flushed) as each event happens, so an interrupted session keeps what
it said:

    {"time": 10.0, "window_start": 2.0, "window_end": 10.0, "text": "squats - Keep your back straight",
     "window": 5, "similarity": 0.21, "latency_s": 0.84, "video": "/data/sessions/workout_01.mp4"}

- `time`: when the feedback is given, in seconds of the video: the end of its window (the moment a live
  system has seen everything the answer is about); times increase from line to line;
- `window_start` / `window_end`: the window the answer is about; `window`: its number in the plan;
- `similarity`: ROUGE-L F1 to the previous emitted feedback (null for the first);
- `latency_s`: how long the window took to answer (frames, encoders, generation);
- `video`: the session (a resolved file path, a camera index or a stream URL).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from mobilevideogpt.live.labels import Feedback


class EventLogError(ValueError):
    """An events file cannot be read; the message names the file and line."""


@dataclass(frozen=True)
class FeedbackEvent:
    time: float
    window_start: float
    window_end: float
    text: str
    window: int
    similarity: float | None
    latency_s: float
    video: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def feedback(self) -> Feedback:
        return Feedback(self.time, self.text)


class EventLog:
    """Appends events to a JSONL file as they come (one line each, flushed)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Open for the whole session (closed by `close` / the context manager): each event is flushed as it comes.
        self._handle: IO[str] | None = open(self.path, "w", encoding="utf-8")  # noqa: SIM115

    def write(self, event: FeedbackEvent) -> None:
        if self._handle is None:
            raise ValueError(f"the event log {self.path} is closed")
        self._handle.write(json.dumps(event.to_json(), ensure_ascii=False) + "\n")
        self._handle.flush()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


_REQUIRED = {"time": ((int, float), "number"), "text": (str, "string")}


def read_events(path: str | os.PathLike) -> list[FeedbackEvent]:
    """Events from a JSONL file written by `EventLog` (blank lines ignored). Only `time` and `text` are
    required, so predictions from another system can be scored too; missing fields get neutral values."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise EventLogError(f"events file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise EventLogError(f"cannot read {path}: {exc}") from None
    events = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise EventLogError(f"{path}, line {number}: not JSON ({exc.msg})") from None
        if not isinstance(item, dict):
            raise EventLogError(f"{path}, line {number}: expected a JSON object")
        for key, (kind, name) in _REQUIRED.items():
            if not isinstance(item.get(key), kind) or isinstance(item.get(key), bool):
                raise EventLogError(f"{path}, line {number}: '{key}' is missing or not a {name}")
        time = float(item["time"])
        if not (math.isfinite(time) and time >= 0):
            raise EventLogError(f"{path}, line {number}: 'time' must be a number of seconds >= 0, got {time}")
        try:
            events.append(
                FeedbackEvent(
                    time=time,
                    window_start=float(item.get("window_start", time)),
                    window_end=float(item.get("window_end", time)),
                    text=item["text"],
                    window=int(item.get("window", number)),
                    similarity=item.get("similarity"),
                    latency_s=float(item.get("latency_s", 0.0)),
                    video=str(item.get("video", "")),
                )
            )
        except (TypeError, ValueError) as exc:
            raise EventLogError(f"{path}, line {number}: an optional field has the wrong type ({exc})") from None
    return events
