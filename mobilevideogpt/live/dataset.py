"""Long session videos with timestamped feedback → window samples, to finetune a model for live coaching.

Each session is cut into the windows the live loop answers (`windows.WindowPlan`, same window, stride and
frame sampler). A window's answer is the feedback given within it — the latest one when several are, since
that is what a coach would say at the window's end — or the fixed `NO_FEEDBACK_ANSWER` when none is. A live
model trained on these says each feedback in the windows that show it; the live loop keeps the first of
those repeats (`suppress.Suppressor`), at most one stride after the feedback's time.

Each window's sampled frames are written as a clip of exactly those frames (lossless FFV1 in Matroska, at
1 fps): the training sampler takes all frames of a clip of `num_frames` frames on its 1 fps grid, in order,
so a model is trained on the very pixels the live loop gives it (both decode with OpenCV; FFV1 decodes
bit-exactly with OpenCV and decord). The clips therefore hold the model's frame count: a plan for 16-frame
models makes 16-frame clips.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from mobilevideogpt.constants import NUM_FRAMES
from mobilevideogpt.live.defaults import DEFAULT_STRIDE_S, DEFAULT_WINDOW_S
from mobilevideogpt.live.frames import VideoFileSource, cut_windows, open_stream
from mobilevideogpt.live.labels import Feedback, SessionLabels
from mobilevideogpt.live.suppress import NO_FEEDBACK_ANSWER
from mobilevideogpt.live.windows import Window, WindowPlan

CLIP_SUFFIX = ".mkv"
_CLIP_NAME = re.compile(r"^\d{5}_\d+-\d+\.mkv$")  # what `clip_name` writes
CLIP_FOURCC = "FFV1"
# A clip of exactly `num_frames` frames at 1 fps is sampled whole by the training sampler (its 1 fps grid has
# exactly `num_frames` points).
CLIP_FPS = 1.0


def window_answer(feedback: Sequence[Feedback], window: Window, silence: str = NO_FEEDBACK_ANSWER) -> str:
    """The latest feedback whose time lies in [window start, window end], else `silence`."""
    inside = [item for item in feedback if window.start_s <= item.time <= window.end_s]
    return max(inside, key=lambda item: item.time).text if inside else silence


@dataclass(frozen=True)
class WindowSample:
    session: str  # the session's key in its label file
    window: Window
    answer: str
    clip: Path

    def to_record(self, video: str, prompt: str, split: str) -> dict:
        """An annotation record in the `qved_*.json` format (extra keys say where the window comes from)."""
        return {
            "video": video,
            "conversations": [{"from": "human", "value": prompt}, {"from": "gpt", "value": self.answer}],
            "split": split,
            "session": self.session,
            "window_start": round(self.window.start_s, 3),
            "window_end": round(self.window.end_s, 3),
        }


def write_clip(path: Path, frames: Sequence[np.ndarray]) -> None:
    """RGB frames → a lossless clip at `CLIP_FPS` (raises OSError naming the file if it cannot be written)."""
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*CLIP_FOURCC), CLIP_FPS, (width, height))
    if not writer.isOpened():
        raise OSError(f"cannot write {path}: this OpenCV has no {CLIP_FOURCC} encoder")
    try:
        for frame in frames:
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    finally:
        writer.release()


def clip_name(window: Window) -> str:
    return f"{window.index:05d}_{window.start_frame}-{window.end_frame}{CLIP_SUFFIX}"


def remove_clips(folder: Path) -> None:
    """Delete the clips an earlier run wrote into `folder` (only files named like clips; nothing else)."""
    if folder.is_dir():
        for entry in folder.iterdir():
            if entry.is_file() and _CLIP_NAME.match(entry.name):
                entry.unlink()


def clip_folder(key: str) -> Path:
    """Where a session's clips go, relative to the clip root: its path without suffix, `..` and root."""
    parts = [part for part in Path(key).with_suffix("").parts if part not in ("..", ".") and part != Path(key).anchor]
    if not parts:
        raise ValueError(f"session {key!r} has no usable name for its clip folder")
    return Path(*parts)


def session_window_samples(
    session: SessionLabels,
    clip_dir: Path,
    window_s: float = DEFAULT_WINDOW_S,
    stride_s: float = DEFAULT_STRIDE_S,
    num_frames: int = NUM_FRAMES,
    silence: str = NO_FEEDBACK_ANSWER,
) -> tuple[list[WindowSample], list[Feedback]]:
    """Cut one session (decoded once) into window samples, writing their clips into `clip_dir` (replacing the
    clips of an earlier run).

    Returns the samples and the feedback no window holds (given after the last window's end).
    Raises `FrameSourceError` for an unreadable video, ValueError for an unusable plan."""
    if session.video is None:
        raise ValueError("window samples need sessions named by their video, not a bare feedback list")
    source = VideoFileSource(session.video)
    plan = WindowPlan.create(source.fps, window_s, stride_s, num_frames)
    remove_clips(clip_dir)
    clip_dir.mkdir(parents=True, exist_ok=True)
    samples = []
    with open_stream(source, plan) as stream:
        for window, frames in cut_windows(stream, plan):
            clip = clip_dir / clip_name(window)
            write_clip(clip, frames)
            samples.append(WindowSample(session.key, window, window_answer(session.feedback, window, silence), clip))
    covered_until = samples[-1].window.end_s if samples else 0.0
    return samples, [item for item in session.feedback if item.time > covered_until]


def build_window_samples(
    sessions: Sequence[SessionLabels],
    clip_root: str | os.PathLike,
    window_s: float = DEFAULT_WINDOW_S,
    stride_s: float = DEFAULT_STRIDE_S,
    num_frames: int = NUM_FRAMES,
    silence: str = NO_FEEDBACK_ANSWER,
    warn: Callable[[str], None] = lambda message: None,
) -> dict[str, list[WindowSample]]:
    """Window samples of every session, by session key; clips go to `clip_root/<session path>/`.

    `warn` hears of feedback that falls after a session's last window (and is therefore in no sample)."""
    clip_root = Path(clip_root)
    out: dict[str, list[WindowSample]] = {}
    folders: dict[Path, str] = {}
    for session in sessions:
        folder = clip_root / clip_folder(session.key)
        if folder in folders:
            raise ValueError(f"sessions {folders[folder]!r} and {session.key!r} would share the clip folder {folder}")
        folders[folder] = session.key
        samples, uncovered = session_window_samples(session, folder, window_s, stride_s, num_frames, silence)
        if uncovered:
            warn(
                f"{session.key}: {len(uncovered)} feedback item(s) after the last window (ends at "
                f"{samples[-1].window.end_s if samples else 0:.2f} s) are in no window sample"
            )
        out[session.key] = samples
    return out
