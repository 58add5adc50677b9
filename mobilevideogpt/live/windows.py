"""Sliding windows over a timeline, and the frames the model's sampler takes from each.

Window k (k = 1, 2, …) ends at frame k·stride_frames and spans the window_frames frames before it (fewer for
the first windows, which start at frame 0: a live coach should speak before a whole window has passed). Its
frames are `sample_frame_indices` of the window, the sampler of training and clip inference, so a window is
seen exactly as a clip of the same frames would be. An event found in window k carries the time of its last
frame (`end_s`): the moment a live system could say it.

Defaults, from what the model was trained on:
- `DEFAULT_WINDOW_S = 8`: the sampler takes 16 frames; for a clip shorter than 16 s they are spread evenly over
  the whole clip (denser than its 1 fps grid), which is how the short single-exercise clips the model is
  finetuned on are seen (the synthetic sample clips last 0.4–6 s). An 8 s window gives a frame every 0.5 s, two
  4 s chunks of 8 frames for the frame scorer, and several repetitions of an exercise; a 16 s window would halve
  that density and double how long a change takes to dominate a window.
- `DEFAULT_STRIDE_S = 2`: the stride is the timing resolution. QEVD's T-F-Score counts a feedback as on time
  within 3 s; the first window holding a moment ends at most one stride after it, so 2 s leaves 1 s of slack.
  Every moment is then seen by 4 windows (a missed window is not a missed feedback), and a model keeps up live
  when it answers a window within 2 s.

The stride is rounded to a whole number of the sampler's frame steps ("lattice"), so consecutive full windows
pick the same frames where they overlap (12 of 16 at the defaults) and per-frame work can be reused; at 25 fps
an 8 s window samples every 13th frame and the 2 s stride becomes 52 frames (2.08 s).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from mobilevideogpt.constants import NUM_FRAMES
from mobilevideogpt.data.video import sample_frame_indices
from mobilevideogpt.live.defaults import DEFAULT_STRIDE_S, DEFAULT_WINDOW_S


@dataclass(frozen=True)
class Window:
    """One window: frames [start_frame, end_frame) and the ones the sampler takes from them."""

    index: int  # k: the window ends at frame k·stride_frames (0 for the whole-video window of a short video)
    start_frame: int
    end_frame: int  # exclusive
    frame_indices: tuple[int, ...]  # absolute frame numbers, sorted, possibly repeated (windows < num_frames)
    fps: float

    @property
    def start_s(self) -> float:
        return self.start_frame / self.fps

    @property
    def end_s(self) -> float:
        """Time of the window's end (just after its last frame): when a live system could answer."""
        return self.end_frame / self.fps

    @property
    def num_window_frames(self) -> int:
        return self.end_frame - self.start_frame


def _positive(name: str, value: float) -> float:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive number, got {value}")
    return float(value)


@dataclass(frozen=True)
class WindowPlan:
    """Window and stride in frames for one frame rate and the model's frames per video."""

    fps: float
    num_frames: int
    window_frames: int
    stride_frames: int
    lattice: int  # every frame a full window samples is ≡ offset (mod lattice)
    offset: int
    warmup_frames: frozenset[int] = field(repr=False)  # frames sampled by the first, shorter windows

    @classmethod
    def create(
        cls,
        fps: float,
        window_s: float = DEFAULT_WINDOW_S,
        stride_s: float = DEFAULT_STRIDE_S,
        num_frames: int = NUM_FRAMES,
    ) -> WindowPlan:
        """Raises ValueError for a non-positive window, stride, frame rate or frame count."""
        fps = _positive("the frame rate", fps)
        window_s, stride_s = _positive("the window", window_s), _positive("the stride", stride_s)
        if num_frames < 1:
            raise ValueError(f"num_frames must be at least 1, got {num_frames}")
        window_frames = max(1, round(window_s * fps))
        lattice = math.gcd(*sample_frame_indices(window_frames, fps, num_frames)) or 1
        stride_frames = max(1, round(stride_s * fps / lattice)) * lattice
        warmup = frozenset(
            index
            for end in range(stride_frames, window_frames, stride_frames)
            for index in sample_frame_indices(end, fps, num_frames)
        )
        return cls(fps, num_frames, window_frames, stride_frames, lattice, (-window_frames) % lattice, warmup)

    @property
    def window_s(self) -> float:
        return self.window_frames / self.fps

    @property
    def stride_s(self) -> float:
        return self.stride_frames / self.fps

    def window(self, index: int) -> Window:
        """Window `index` (≥ 1): frames [max(0, end − window_frames), end), end = index·stride_frames."""
        if index < 1:
            raise ValueError(f"window numbers start at 1, got {index}")
        end = index * self.stride_frames
        return self._span(index, max(0, end - self.window_frames), end)

    def whole(self, total_frames: int) -> Window:
        """The one window of a video shorter than a stride (index 0): all of its frames."""
        if total_frames < 1:
            raise ValueError("a window needs at least one frame")
        return self._span(0, 0, total_frames)

    def _span(self, index: int, start: int, end: int) -> Window:
        picked = sample_frame_indices(end - start, self.fps, self.num_frames)
        return Window(index, start, end, tuple(start + i for i in picked), self.fps)

    def complete_windows(self, available_frames: int) -> int:
        """How many windows are complete once frames 0 … available_frames − 1 exist."""
        return available_frames // self.stride_frames

    def windows(self, total_frames: int) -> list[Window]:
        """Every window of a video of `total_frames` frames; the final part shorter than a stride starts no
        window of its own (its frames are in the windows before), and a video shorter than one stride gets one
        window over all of it."""
        count = self.complete_windows(total_frames)
        if count == 0:
            return [self.whole(total_frames)] if total_frames > 0 else []
        return [self.window(k) for k in range(1, count + 1)]

    def keeps(self, frame: int) -> bool:
        """Whether some window may sample `frame`: a frame buffer needs to hold no other frame."""
        return (
            frame % self.lattice == self.offset
            or frame in self.warmup_frames
            or frame < self.stride_frames  # the whole-video window of a video shorter than one stride
        )
