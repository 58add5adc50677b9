"""Feedback for people: SRT subtitles any player overlays on the video, and a copy with the text burned in.

Each feedback is shown from its time until the next one starts or `display_s` seconds have passed.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from mobilevideogpt.live.defaults import DEFAULT_DISPLAY_S
from mobilevideogpt.live.labels import Feedback


@dataclass(frozen=True)
class Caption:
    start: float
    end: float
    text: str


def captions(feedback: Iterable[Feedback], display_s: float = DEFAULT_DISPLAY_S) -> list[Caption]:
    """One caption per feedback (sorted by time), shown until the next starts or `display_s` passed."""
    if display_s <= 0:
        raise ValueError(f"captions need a positive display time, got {display_s}")
    items = sorted(feedback, key=lambda f: f.time)
    out = []
    for item, following in zip(items, [*items[1:], None], strict=False):
        end = item.time + display_s if following is None else min(following.time, item.time + display_s)
        if end > item.time:
            out.append(Caption(item.time, end, item.text))
    return out


def srt_timestamp(seconds: float) -> str:
    """`HH:MM:SS,mmm`, rounded to the millisecond."""
    millis = round(max(seconds, 0.0) * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d},{millis:03d}"


def srt_text(captions_: Sequence[Caption]) -> str:
    """SubRip: numbered cues `start --> end` with their text; blank lines inside a text would end the cue,
    so they are dropped."""
    cues = []
    for number, caption in enumerate(captions_, start=1):
        lines = [line.strip() for line in caption.text.splitlines() if line.strip()]
        cues.append(f"{number}\n{srt_timestamp(caption.start)} --> {srt_timestamp(caption.end)}\n" + "\n".join(lines))
    return "\n\n".join(cues) + ("\n" if cues else "")


def write_srt(path: str | os.PathLike, captions_: Sequence[Caption]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(srt_text(captions_), encoding="utf-8")
    return path


def _wrap(text: str, width: int, font: int, scale: float, thickness: int) -> list[str]:
    """Greedy word wrap to `width` pixels (a word longer than the width gets a line of its own)."""
    lines: list[str] = []
    for paragraph in text.splitlines():
        line = ""
        for word in paragraph.split():
            candidate = f"{line} {word}".strip()
            if line and cv2.getTextSize(candidate, font, scale, thickness)[0][0] > width:
                lines.append(line)
                line = word
            else:
                line = candidate
        if line:
            lines.append(line)
    return lines


def draw_caption(frame: np.ndarray, text: str) -> None:
    """Draw `text` over the bottom of a BGR frame, in white on a darkened band (in place). OpenCV's
    Hershey fonts cover ASCII; other characters are drawn as '?'."""
    height, width = frame.shape[:2]
    font = cv2.FONT_HERSHEY_SIMPLEX
    scale = max(0.35, height / 720)
    thickness = max(1, round(scale * 2))
    margin = max(4, width // 40)
    lines = _wrap(text, width - 2 * margin, font, scale, thickness)
    if not lines:
        return
    line_height = cv2.getTextSize("Ag", font, scale, thickness)[0][1] * 2
    top = max(0, height - margin - line_height * len(lines))
    band = frame[top:height]
    band[:] = (band.astype(np.float32) * 0.4).astype(np.uint8)
    for number, line in enumerate(lines):
        baseline = top + line_height * (number + 1) - line_height // 4
        cv2.putText(frame, line, (margin, baseline), font, scale, (255, 255, 255), thickness, cv2.LINE_AA)


def burn_in(video_path: str | os.PathLike, captions_: Sequence[Caption], out_path: str | os.PathLike) -> int:
    """Copy `video_path` to `out_path` (MPEG-4, same size and frame rate) with each caption drawn on the
    frames of its time span; returns the number of frames written (that of the source).

    Raises RuntimeError naming the file when the source cannot be read or the copy cannot be written."""
    capture = cv2.VideoCapture(str(video_path))
    if not capture.isOpened():
        raise RuntimeError(f"cannot burn captions into {video_path}: OpenCV cannot open it")
    fps = float(capture.get(cv2.CAP_PROP_FPS))
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    writer = None
    count = 0
    ordered = sorted(captions_, key=lambda c: c.start)
    current = 0
    try:
        while True:
            ok, frame = capture.read()
            if not ok or frame is None:
                break
            if writer is None:
                height, width = frame.shape[:2]
                writer = cv2.VideoWriter(str(out_path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
                if not writer.isOpened():
                    raise RuntimeError(f"cannot write {out_path} (OpenCV without an MPEG-4 encoder?)")
            time = count / fps
            while current < len(ordered) and ordered[current].end <= time:
                current += 1
            if current < len(ordered) and ordered[current].start <= time:
                draw_caption(frame, ordered[current].text)
            writer.write(frame)
            count += 1
    finally:
        capture.release()
        if writer is not None:
            writer.release()
    if count == 0:
        raise RuntimeError(f"cannot burn captions into {video_path}: no frame could be decoded")
    return count
