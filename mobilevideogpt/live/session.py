"""The live loop: cut a window, answer it, keep what is new, stamp it with the window's end.

For each window of the plan (`windows.WindowPlan`): take its sampled frames from the ring buffer, build the
model inputs (through `cache.FrameCache` unless caching is off), ask `VideoChat.answer` with the session's
prompt, and pass the answer through the `Suppressor`; an emitted answer becomes a `FeedbackEvent` at the
window's end time.

Offline (a file read as fast as it decodes) every window is answered. From a live source (camera, stream,
or a file played at its true pace) the loop always answers the most recent complete window: if the model
took longer than a stride, the windows that completed meanwhile are skipped, counted and reported, and
nothing queues up (the ring buffer only holds the latest frames).

Real-time factor = average time to answer a window / stride: at or below 1 the model keeps up with a live
source and answers every window; at 2 it answers about every other one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from mobilevideogpt.live.cache import FrameCache, window_inputs
from mobilevideogpt.live.defaults import (
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_STRIDE_S,
    DEFAULT_THRESHOLD,
    DEFAULT_WINDOW_S,
)
from mobilevideogpt.live.events import EventLog, FeedbackEvent
from mobilevideogpt.live.frames import (
    FrameSource,
    FrameSourceError,
    cut_windows,
    open_stream,
)
from mobilevideogpt.live.suppress import Suppressor
from mobilevideogpt.live.windows import Window, WindowPlan

logger = logging.getLogger(__name__)


@dataclass
class SessionSummary:
    video: str
    live: bool
    fps: float
    window_s: float  # as planned: the requested lengths rounded to whole frames and sampler steps
    stride_s: float
    media_s: float = 0.0  # seconds of video read
    windows_answered: int = 0
    windows_skipped: int = 0
    events: int = 0
    repeats_suppressed: int = 0
    silent_windows: int = 0
    busy_s: float = 0.0  # time spent answering windows
    wall_s: float = 0.0
    cache_hits: int | None = None  # frames whose preprocessing and CLIP features were reused
    cache_misses: int | None = None
    max_buffered_frames: int = 0
    new_tokens: int = 0  # generated over all windows answered
    draft_tokens_confirmed: int = 0  # of them, from the window before's answer, checked several at a time
    error: str | None = None  # why the source stopped early, if it did

    @property
    def seconds_per_window(self) -> float | None:
        return self.busy_s / self.windows_answered if self.windows_answered else None

    @property
    def real_time_factor(self) -> float | None:
        """Average time to answer a window over the stride (> 1: a live source outpaces the model)."""
        per_window = self.seconds_per_window
        return per_window / self.stride_s if per_window is not None else None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "seconds_per_window": self.seconds_per_window, "real_time_factor": self.real_time_factor}


@dataclass
class SessionResult:
    summary: SessionSummary
    events: list[FeedbackEvent] = field(default_factory=list)


class LiveSession:
    """Timestamped feedback on a frame source from a loaded `VideoChat` (or any object with its `answer`,
    `num_frames`, `image_size` and, for caching, `model.model.encode_clip_frames`).

    Args:
        prompt: asked about every window (no default: the library does not know the application).
        threshold: `Suppressor` similarity threshold; emitted feedback is what differs from the last one.
        cache: reuse per-frame work across overlapping windows (`cache.FrameCache`).
        max_new_tokens / min_new_tokens: generation length per window (greedy decoding).
        on_event: called with each emitted event, as it happens.
        log: receives one line whenever windows are skipped (default: this module's logger, warning level).
    """

    def __init__(
        self,
        chat,
        *,
        prompt: str,
        window_s: float = DEFAULT_WINDOW_S,
        stride_s: float = DEFAULT_STRIDE_S,
        threshold: float = DEFAULT_THRESHOLD,
        cache: bool = True,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        min_new_tokens: int = 0,
        on_event: Callable[[FeedbackEvent], None] | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        if not prompt or not prompt.strip():
            raise ValueError("a live session needs a prompt to ask about each window")
        self.chat = chat
        self.prompt = prompt
        self.window_s = window_s
        self.stride_s = stride_s
        self.threshold = threshold
        self.cache = cache
        self.generation = {"max_new_tokens": max_new_tokens, "min_new_tokens": min_new_tokens}
        self.on_event = on_event
        self.log = log or logger.warning
        self._stop = threading.Event()
        self._source: FrameSource | None = None
        self._draft: list[int] = []  # the last answer's tokens: the next window's answer often repeats them

    def stop(self) -> None:
        """End a running session after the current window, as if the source had ended (safe from a signal
        handler or another thread): what was said so far is kept."""
        self._stop.set()
        if self._source is not None:
            self._source.stop()

    def run(
        self, source: FrameSource, *, event_log: EventLog | None = None, max_duration_s: float | None = None
    ) -> SessionResult:
        """Answer the windows of `source` until it ends (or `max_duration_s` of media); closes the source.

        A source that fails midway ends the session: `summary.error` says why, and everything emitted before
        stays in the result and the event log. Raises ValueError for a window/stride/frame-rate that cannot be
        planned."""
        try:
            plan = WindowPlan.create(source.fps, self.window_s, self.stride_s, self.chat.num_frames)
        except ValueError:
            source.close()
            raise
        self._stop.clear()
        self._draft = []
        summary = SessionSummary(source.uri, source.live, source.fps, plan.window_s, plan.stride_s)
        result = SessionResult(summary)
        suppressor = Suppressor(self.threshold)
        cache = FrameCache(self.chat.model.model.encode_clip_frames, self.chat.image_size) if self.cache else None
        last_window = None
        if max_duration_s is not None:
            last_window = plan.complete_windows(int(max_duration_s * plan.fps))

        def skipped(first: int, last: int) -> None:
            count = last - first + 1
            summary.windows_skipped += count
            span = f"{first}" if count == 1 else f"{first}-{last}"
            self.log(
                f"behind real time: skipped {count} window{'s' if count > 1 else ''} ({span}), "
                f"{summary.windows_skipped} so far; answering window {last + 1} (ends at "
                f"{plan.window(last + 1).end_s:.1f} s)"
            )

        started = time.perf_counter()
        self._source = source
        with open_stream(source, plan) as stream:
            try:
                for window, frames in cut_windows(stream, plan, last_window, skipped):
                    if self._stop.is_set():
                        break
                    if cache is not None:
                        cache.release_before(window.start_frame)
                    self._answer(window, frames, source.uri, cache, suppressor, result, event_log)
            except FrameSourceError as exc:
                summary.error = str(exc)
            summary.media_s = stream.available / plan.fps
            summary.max_buffered_frames = stream.buffer.max_held
        self._source = None
        summary.wall_s = time.perf_counter() - started
        if cache is not None:
            summary.cache_hits, summary.cache_misses = cache.hits, cache.misses
        return result

    def _answer(
        self,
        window: Window,
        frames: list[np.ndarray],
        video: str,
        cache: FrameCache | None,
        suppressor: Suppressor,
        result: SessionResult,
        event_log: EventLog | None,
    ) -> None:
        started = time.perf_counter()
        path = f"{video}#t={window.start_s:.3f},{window.end_s:.3f}"
        if cache is not None:
            inputs = cache.inputs(frames, window, path)
        else:
            inputs = window_inputs(frames, window, self.chat.image_size, path)
        answer = self.chat.answer(inputs, self.prompt, **self.generation, draft=self._draft)
        latency = time.perf_counter() - started
        self._draft = list(getattr(answer, "token_ids", []))
        summary = result.summary
        summary.windows_answered += 1
        summary.new_tokens += len(self._draft)  # this answer's tokens, the next window's draft
        summary.draft_tokens_confirmed += getattr(answer, "draft_accepted", 0)
        summary.busy_s += latency
        decision = suppressor.check(answer.text)
        if decision.reason == "silence":
            summary.silent_windows += 1
        elif decision.reason == "repeat":
            summary.repeats_suppressed += 1
        if not decision.emit:
            return
        event = FeedbackEvent(
            time=window.end_s,
            window_start=window.start_s,
            window_end=window.end_s,
            text=answer.text,
            window=window.index,
            similarity=decision.similarity,
            latency_s=latency,
            video=video,
        )
        result.events.append(event)
        summary.events += 1
        if event_log is not None:
            event_log.write(event)
        if self.on_event is not None:
            self.on_event(event)
