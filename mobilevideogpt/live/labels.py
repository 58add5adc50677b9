"""Timestamped feedback labels of long session videos: one format for training labels and references.

A label file is a JSON object mapping each session video to the feedback given during it:

    {
      "sessions/workout_01.mp4": [
        {"time": 3.0, "text": "squats - Keep your back straight"},
        {"time": 17.5, "text": "pushups on knees - Lower your chest closer to the floor"}
      ]
    }

- keys: video paths relative to the folder holding the label file (absolute paths are used as they are);
- `time`: seconds from the start of the video (a number ≥ 0), when the feedback is given;
  `text`: what is said (a non-empty string); other fields of an item are ignored;
- items may come in any order (they are sorted by time; equal times keep their order).

For scoring a single session, the file may also be a bare list of items (its video is then named by the
predictions). Every problem raises `LabelError` naming the file and the item.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class LabelError(ValueError):
    """A label file is missing, not JSON, or has an unusable item; the message says where."""


@dataclass(frozen=True)
class Feedback:
    time: float  # seconds from the start of the video
    text: str

    def to_json(self) -> dict[str, Any]:
        return {"time": self.time, "text": self.text}


@dataclass(frozen=True)
class SessionLabels:
    key: str  # the video as the label file names it ("" for a bare list)
    video: Path | None  # the file it resolves to (None for a bare list)
    feedback: tuple[Feedback, ...]  # sorted by time


def parse_feedback(items: Any, where: str) -> tuple[Feedback, ...]:
    """`[{"time": s, "text": ...}, ...]` → feedback sorted by time; `where` names the list in errors."""
    if not isinstance(items, list):
        raise LabelError(f"{where}: expected a list of {{\"time\": seconds, \"text\": ...}} items, got {type(items).__name__}")
    feedback = []
    for number, item in enumerate(items):
        if not isinstance(item, dict):
            raise LabelError(f"{where}, item {number}: expected an object with 'time' and 'text'")
        time, text = item.get("time"), item.get("text")
        if isinstance(time, bool) or not isinstance(time, (int, float)) or not math.isfinite(time) or time < 0:
            raise LabelError(f"{where}, item {number}: 'time' must be a number of seconds >= 0, got {time!r}")
        if not isinstance(text, str) or not text.strip():
            raise LabelError(f"{where}, item {number}: 'text' must be a non-empty string, got {text!r}")
        feedback.append(Feedback(float(time), text.strip()))
    return tuple(sorted(feedback, key=lambda f: f.time))


def load_labels(path: str | os.PathLike) -> list[SessionLabels]:
    """Read a label file (see the module docstring); sessions in file order."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LabelError(f"label file not found: {path}") from None
    except json.JSONDecodeError as exc:
        raise LabelError(f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise LabelError(f"cannot read {path}: {exc}") from None
    if isinstance(data, list):
        return [SessionLabels("", None, parse_feedback(data, str(path)))]
    if not isinstance(data, dict):
        raise LabelError(f"{path}: expected an object mapping video paths to feedback lists, got {type(data).__name__}")
    sessions = []
    for key, items in data.items():
        if not key.strip():
            raise LabelError(f"{path}: a session has an empty video path")
        video = Path(key) if Path(key).is_absolute() else path.parent / key
        sessions.append(SessionLabels(key, video, parse_feedback(items, f"{path}, session {key!r}")))
    return sessions


def labels_json(sessions: Mapping[str, Sequence[Feedback]]) -> dict[str, list[dict[str, Any]]]:
    """The label-file object for `{video key: feedback}`."""
    return {key: [item.to_json() for item in sorted(items, key=lambda f: f.time)] for key, items in sessions.items()}
