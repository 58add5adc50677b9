"""Frame sources and the bounded ring buffer that live windows are cut from.

Sources decode front to back, once, with OpenCV (the same decoder for a file, a camera and a stream URL, so
a window's pixels do not depend on where they came from) and hand out RGB frames numbered from 0. Media
time is frame number / fps for every source, so events, subtitles and a recorded stream agree.

- `VideoFileSource(path)`: a file, as fast as it decodes (offline), or at its true pace with
  `realtime=True` (the reader waits until each frame's time: a recorded workout played as if live).
- `CaptureSource(0)` / `CaptureSource("rtsp://…")`: a camera index or a stream URL OpenCV can open; it can
  record every frame it reads to a file (for a captioned copy afterwards).

`FrameStream` puts a source and a `FrameBuffer` together. A live source (camera, stream, realtime file) is
read by a background thread at its own pace: the buffer keeps only the frames a window may sample and
evicts anything older than a window plus two strides, so a slow model never makes memory grow; it simply
finds newer frames when it comes back. An offline file is read on demand by the caller instead.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np

from mobilevideogpt.live.windows import Window, WindowPlan

# OpenCV reports 0 or nonsense (e.g. 1000, 90000) for the rate of some cameras and streams.
PLAUSIBLE_FPS = (1.0, 240.0)
FPS_PROBE_FRAMES = 15


class FrameSourceError(RuntimeError):
    """A frame source cannot be opened or read; the message names it and what to check."""


class FrameSource:
    """Reads a `cv2.VideoCapture` front to back; converts (and records) only the frames asked for.

    `live`: whether the source runs at its own pace (then a thread reads it); `fps`: frames per second of media
    time; `uri`: the video as events name it."""

    live = False

    def __init__(
        self, capture: cv2.VideoCapture, name: str, uri: str, record_to: str | Path | None = None
    ) -> None:
        self.capture = capture
        self.name = name  # for messages
        self.uri = uri  # what events record as their video: a resolved file path, camera index or URL
        self.fps = float(capture.get(cv2.CAP_PROP_FPS))
        self.record_to = Path(record_to) if record_to is not None else None
        self._writer: cv2.VideoWriter | None = None
        self._stop = threading.Event()
        self._decoded_ahead: list[np.ndarray] = []  # frames read while probing the rate, replayed first

    def stop(self) -> None:
        """Ask a running `frames` loop to end after the current frame (safe from another thread)."""
        self._stop.set()

    def _due(self, index: int) -> None:
        """Hook for pacing: return when frame `index` is due (now, for sources that are paced already)."""

    def _record(self, bgr: np.ndarray) -> None:
        if self.record_to is None:
            return
        if self._writer is None:
            height, width = bgr.shape[:2]
            self.record_to.parent.mkdir(parents=True, exist_ok=True)
            self._writer = cv2.VideoWriter(str(self.record_to), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, (width, height))
            if not self._writer.isOpened():
                raise FrameSourceError(f"cannot write the recording {self.record_to} (OpenCV without FFmpeg?)")
        self._writer.write(bgr)

    def frames(self, keep: Callable[[int], bool]) -> Iterator[tuple[int, np.ndarray | None]]:
        """(index, RGB frame) for every frame, the frame being None when `keep(index)` is false."""
        index = 0
        while not self._stop.is_set():
            if self._decoded_ahead:
                bgr = self._decoded_ahead.pop(0)
            else:
                self._due(index)
                if not self.capture.grab():
                    return
                bgr = None
                if keep(index) or self.record_to is not None:
                    ok, bgr = self.capture.retrieve()
                    if not ok or bgr is None:
                        raise FrameSourceError(f"{self.name}: frame {index} could not be decoded")
            if bgr is not None:
                self._record(bgr)
            yield index, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB) if keep(index) and bgr is not None else None
            index += 1

    def close(self) -> None:
        self.capture.release()
        if self._writer is not None:
            self._writer.release()
            self._writer = None


class VideoFileSource(FrameSource):
    """A video file; `realtime=True` hands out each frame no earlier than its time (frame / fps)."""

    def __init__(self, path: str | Path, realtime: bool = False) -> None:
        path = Path(path)
        if not path.is_file():
            raise FrameSourceError(f"video not found: {path}")
        capture = cv2.VideoCapture(str(path))
        if not capture.isOpened():
            capture.release()
            raise FrameSourceError(f"OpenCV cannot open {path}: not a video, corrupt, or an unsupported codec")
        super().__init__(capture, str(path), str(path.resolve()))
        if not (math.isfinite(self.fps) and self.fps > 0):
            capture.release()
            raise FrameSourceError(f"{path} reports no frame rate, so its frames have no times; re-encode it")
        self.live = realtime
        self._clock_start: float | None = None

    def _due(self, index: int) -> None:
        if not self.live:
            return
        now = time.monotonic()
        if self._clock_start is None:
            self._clock_start = now
        wait = self._clock_start + index / self.fps - now
        if wait > 0:
            self._stop.wait(wait)


def parse_capture_spec(spec: str) -> int | str | None:
    """A camera index ("0") or a stream URL ("rtsp://…") from `--video_path`; None for a file path."""
    text = spec.strip()
    if text.isdigit():
        return int(text)
    return text if "://" in text else None


class CaptureSource(FrameSource):
    """A camera (`cv2.VideoCapture(0)`) or a stream URL: live, paced by the device or the network."""

    live = True

    def __init__(self, spec: int | str, record_to: str | Path | None = None) -> None:
        capture = cv2.VideoCapture(spec)
        what = f"camera {spec}" if isinstance(spec, int) else f"stream {spec}"
        if not capture.isOpened():
            capture.release()
            raise FrameSourceError(f"OpenCV cannot open {what} (is it connected, free, and readable by this user?)")
        super().__init__(capture, what, str(spec), record_to)
        if not (PLAUSIBLE_FPS[0] <= self.fps <= PLAUSIBLE_FPS[1]):
            self.fps = self._probe_fps()

    def _probe_fps(self) -> float:
        """Measure the delivered frame rate over a few frames (kept, and handed out first)."""
        started = time.monotonic()
        for _ in range(FPS_PROBE_FRAMES):
            ok, bgr = self.capture.read()
            if not ok or bgr is None:
                raise FrameSourceError(f"{self.name} delivered no frames")
            self._decoded_ahead.append(bgr)
        elapsed = time.monotonic() - started
        if elapsed <= 0:
            raise FrameSourceError(f"{self.name} reports no usable frame rate and delivered frames too fast to time")
        return min(max((FPS_PROBE_FRAMES - 1) / elapsed, PLAUSIBLE_FPS[0]), PLAUSIBLE_FPS[1])


class FrameBuffer:
    """Frames by index, bounded: holds at most the frames within `horizon` of the newest one."""

    def __init__(self, horizon: int) -> None:
        if horizon < 1:
            raise ValueError(f"the buffer horizon must be at least one frame, got {horizon}")
        self.horizon = horizon
        self._frames: dict[int, np.ndarray] = {}
        self._available = 0  # frames 0 … available − 1 have been read (kept or not)
        self._released = 0
        self.max_held = 0
        self.lock = threading.Condition()

    @property
    def available(self) -> int:
        return self._available

    def push(self, index: int, frame: np.ndarray | None) -> None:
        with self.lock:
            if frame is not None:
                self._frames[index] = frame
            self._available = index + 1
            self._evict()
            self.max_held = max(self.max_held, len(self._frames))
            self.lock.notify_all()

    def release_before(self, index: int) -> None:
        """Frames before `index` will not be asked for again."""
        with self.lock:
            self._released = max(self._released, index)
            self._evict()

    def _evict(self) -> None:
        oldest = max(self._released, self._available - self.horizon)
        for index in [i for i in self._frames if i < oldest]:
            del self._frames[index]

    def take(self, indices: Sequence[int]) -> list[np.ndarray] | None:
        """The frames at `indices` (repeats allowed), or None when one of them is no longer (or not) held."""
        with self.lock:
            if any(i not in self._frames for i in indices):
                return None
            return [self._frames[i] for i in indices]


class FrameStream:
    """A source feeding a `FrameBuffer`: read on demand (offline file) or by a thread at the source's pace."""

    def __init__(self, source: FrameSource, keep: Callable[[int], bool], horizon: int) -> None:
        self.source = source
        self.buffer = FrameBuffer(horizon)
        self.error: BaseException | None = None
        self.ended = False
        self._frames = source.frames(keep)
        self._thread: threading.Thread | None = None
        if source.live:
            self._thread = threading.Thread(target=self._read_all, name="frame-reader", daemon=True)
            self._thread.start()

    @property
    def live(self) -> bool:
        return self.source.live

    @property
    def available(self) -> int:
        return self.buffer.available

    def _read_one(self) -> bool:
        try:
            index, frame = next(self._frames)
        except StopIteration:
            return False
        self.buffer.push(index, frame)
        return True

    def _read_all(self) -> None:
        try:
            while self._read_one():
                pass
        except Exception as exc:  # noqa: BLE001 - handed to the consumer, which reports it
            self.error = exc
        finally:
            with self.buffer.lock:
                self.ended = True
                self.buffer.lock.notify_all()

    def wait_for(self, count: int) -> bool:
        """Block until `count` frames have been read; False when the source ended first. Raises the reader's
        error, if it failed."""
        if self._thread is None:
            while self.buffer.available < count and not self.ended:
                try:
                    if not self._read_one():
                        self.ended = True
                except Exception as exc:  # noqa: BLE001 - reported below in one form for both modes
                    self.ended, self.error = True, exc
            self._raise_error()
            return self.buffer.available >= count
        with self.buffer.lock:
            self.buffer.lock.wait_for(lambda: self.buffer.available >= count or self.ended)
        self._raise_error()
        return self.buffer.available >= count

    def _raise_error(self) -> None:
        if self.error is None:
            return
        error, self.error = self.error, None
        if isinstance(error, FrameSourceError):
            raise error
        raise FrameSourceError(f"{self.source.name}: reading frames failed ({type(error).__name__}: {error})") from error

    def close(self) -> None:
        self.source.stop()
        if self._thread is not None:
            self._thread.join()
        self._frames.close()
        self.source.close()

    def __enter__(self) -> FrameStream:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def open_stream(source: FrameSource, plan: WindowPlan) -> FrameStream:
    """A stream holding what `plan`'s windows need: frames they may sample, within a window and two strides."""
    return FrameStream(source, plan.keeps, plan.window_frames + 2 * plan.stride_frames)


def cut_windows(
    stream: FrameStream,
    plan: WindowPlan,
    last_window: int | None = None,
    on_skip: Callable[[int, int], None] | None = None,
) -> Iterator[tuple[Window, list[np.ndarray]]]:
    """The windows of `plan` over `stream` with their sampled frames (RGB), in order, until the source ends
    (or after window `last_window`).

    Offline every window comes in turn. From a live stream each step takes the most recent complete window:
    windows that completed while the caller was busy are skipped, and `on_skip(first, last)` hears of each
    skipped run. A source shorter than one stride yields one window over all of it. When the caller comes back
    for the next window, the frames before it leave the buffer. Raises `FrameSourceError` if the source fails.
    """
    k = 1
    while last_window is None or k <= last_window:
        if not stream.wait_for(k * plan.stride_frames):
            if k == 1 and stream.available > 0:
                whole = plan.whole(stream.available)
                frames = stream.buffer.take(whole.frame_indices)
                if frames is not None:
                    yield whole, frames
            return
        if stream.live:
            latest = plan.complete_windows(stream.available)
            if last_window is not None:
                latest = min(latest, last_window)
            if latest > k:
                if on_skip is not None:
                    on_skip(k, latest - 1)
                k = latest
        window = plan.window(k)
        frames = stream.buffer.take(window.frame_indices)
        if frames is None:
            if not stream.live:
                raise RuntimeError(f"frames of window {k} left the buffer of an offline source")
            continue  # evicted while deciding: the next pass takes a newer window
        yield window, frames
        stream.buffer.release_before(plan.window(k + 1).start_frame)
        k += 1
