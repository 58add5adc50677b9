"""Video decoding and the one frame sampler shared by training, inference and evaluation.

The published code samples frames differently when training (min 8 frames, zero padding) and when inferring
(16 frames); here every caller goes through `sample_frame_indices`, and both preprocessors see the same
decoded frames (`load_video_inputs`).

Decoding uses decord when it is installed (a fresh `VideoReader` per call, so nothing is shared across
DataLoader worker processes) and OpenCV otherwise, or when decord cannot open a file that OpenCV can.
`MOBILEVIDEOGPT_VIDEO_BACKEND=decord|opencv|auto` (or the `backend` argument) forces a choice.
"""

from __future__ import annotations

import importlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

from mobilevideogpt.constants import IMAGE_SIZE, NUM_FRAMES
from mobilevideogpt.data.transforms import clip_transform, videomamba_transform

BACKEND_ENV_VAR = "MOBILEVIDEOGPT_VIDEO_BACKEND"
BACKENDS = ("decord", "opencv")
# A damaged video is reported once, as a VideoDecodeError naming it; FFmpeg's own per-frame complaints (hundreds of
# lines for one file) stay off the console unless the user asks for them by setting this variable.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")


class VideoDecodeError(RuntimeError):
    """A video file cannot be turned into frames; the message names the file and the reason."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot decode video {self.path}: {reason}")


def _grid_step(fps: float) -> int:
    """Frames between two ≈1 fps grid points; 1 when the frame rate is unknown (0, negative, NaN, inf)."""
    if not math.isfinite(fps) or fps <= 0:
        return 1
    return max(1, round(fps))


def sample_frame_indices(num_total_frames: int, fps: float, num_frames: int = NUM_FRAMES) -> list[int]:
    """Pick `num_frames` sorted frame indices from a video of `num_total_frames` frames at `fps`.

    The published rule (upstream `eval/video_encoding.py::_get_rawvideo_dec`): grid points every round(fps) frames (≈1 frame per second);
    more than `num_frames` grid points → `np.linspace(0, n-1, num_frames)` over the grid, truncated to int;
    exactly `num_frames` → the grid; fewer → `num_frames` frames `stride = (last // (num_frames-1))` apart,
    i.e. evenly spread and denser than 1 fps. An unknown frame rate counts every frame as a grid point.

    Deliberate fix: a video with fewer than `num_frames` frames in total gets its frames repeated evenly
    (nearest-frame temporal upsampling, `round(linspace(0, last, num_frames))`) instead of zero-padded frames,
    so the model always sees `num_frames` real frames and the frame scorer can never select padding.

    Raises:
        ValueError: `num_total_frames < 1` or `num_frames < 1`.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be at least 1, got {num_frames}")
    if num_total_frames < 1:
        raise ValueError(f"a video needs at least one frame to sample from, got {num_total_frames}")
    last = num_total_frames - 1
    if num_total_frames < num_frames:
        return np.floor(np.linspace(0, last, num_frames) + 0.5).astype(int).tolist()
    grid = list(range(0, num_total_frames, _grid_step(fps)))
    if len(grid) > num_frames:
        return [grid[i] for i in np.linspace(0, len(grid) - 1, num_frames).astype(int)]
    if len(grid) == num_frames:
        return grid
    # Only reachable with num_frames >= 2: a grid always has at least one point.
    stride = max(1, last // (num_frames - 1))
    return [stride * i for i in range(num_frames)]


@dataclass(frozen=True)
class DecodedVideo:
    """Sampled frames of one video and what the decoder learned about it."""

    frames: np.ndarray  # (num_frames, H, W, 3) uint8 RGB
    indices: list[int]
    fps: float
    num_total_frames: int
    backend: str
    path: str

    @property
    def height(self) -> int:
        return int(self.frames.shape[1])

    @property
    def width(self) -> int:
        return int(self.frames.shape[2])

    @property
    def duration_s(self) -> float | None:
        """Length in seconds, or None when the container reports no usable frame rate."""
        if not math.isfinite(self.fps) or self.fps <= 0:
            return None
        return self.num_total_frames / self.fps


@dataclass
class VideoInputs:
    """Model-ready tensors for one video; both tensors come from the same decoded frames."""

    frames: torch.Tensor  # (T, 3, image_size, image_size) float32, VideoMamba preprocessing
    context_frames: torch.Tensor  # (T, 3, image_size, image_size) float32, CLIP preprocessing
    indices: list[int]
    fps: float
    num_total_frames: int
    path: str
    # (T, L, D) CLIP patch features of `context_frames` when already computed (the model's
    # `encode_clip_frames`, e.g. cached for frames shared by overlapping windows); used instead of a CLIP pass,
    # with their (T, L) [CLS]-attention scores when the model runs with a visual-token budget.
    context_features: torch.Tensor | None = None
    context_scores: torch.Tensor | None = None


def _import_decord() -> ModuleType | None:
    try:
        decord = importlib.import_module("decord")
    except ImportError:
        return None
    decord.logging.set_level(decord.logging.QUIET)  # FFmpeg's complaints; failures are raised with the file named
    return decord


def _requested_backend(backend: str | None) -> str | None:
    """The forced backend name, or None for automatic choice."""
    source = "backend argument" if backend is not None else BACKEND_ENV_VAR
    value = backend if backend is not None else os.environ.get(BACKEND_ENV_VAR, "")
    value = value.strip().lower()
    if value in ("", "auto"):
        return None
    if value not in BACKENDS:
        raise ValueError(f"unknown video backend {value!r} (from {source}); use one of: decord, opencv, auto")
    if value == "decord" and _import_decord() is None:
        raise ImportError(
            f"the decord video backend was requested ({source}) but decord is not installed; "
            f"`pip install decord` or set {BACKEND_ENV_VAR}=opencv"
        )
    return value


def _short(exc: BaseException) -> str:
    """First line of an exception message, bounded (decord embeds whole C++ stack traces)."""
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _stack(path: Path, frames: list[np.ndarray]) -> np.ndarray:
    try:
        return np.stack(frames)
    except ValueError as exc:
        raise VideoDecodeError(path, f"frames have different sizes ({_short(exc)})") from exc


def _decode_with_decord(path: Path, num_frames: int) -> DecodedVideo:
    decord = _import_decord()
    try:
        reader = decord.VideoReader(str(path), num_threads=1)
    except Exception as exc:  # decord raises its own DECORDError for anything it cannot open
        raise VideoDecodeError(path, f"decord cannot open it, not a video or corrupt ({_short(exc)})") from exc
    total = len(reader)
    if total < 1:
        raise VideoDecodeError(path, "the video contains no frames")
    fps = float(reader.get_avg_fps())
    indices = sample_frame_indices(total, fps, num_frames)
    unique = sorted(set(indices))
    try:
        batch = reader.get_batch(unique).asnumpy()
    except Exception as exc:
        raise VideoDecodeError(path, f"decord could not decode frames {unique} ({_short(exc)})") from exc
    position = {index: row for row, index in enumerate(unique)}
    frames = batch[[position[i] for i in indices]]
    return DecodedVideo(np.ascontiguousarray(frames), indices, fps, total, "decord", str(path))


def _opencv_scan(path: Path, wanted: set[int]) -> tuple[dict[int, np.ndarray], int]:
    """Read the whole stream once; keep the `wanted` frames (RGB) and count the frames that decode."""
    import cv2

    capture = cv2.VideoCapture(str(path))
    kept: dict[int, np.ndarray] = {}
    count = 0
    try:
        if not capture.isOpened():
            raise VideoDecodeError(path, "OpenCV cannot open it (not a video, corrupt, or unsupported codec)")
        while capture.grab():
            if count in wanted:
                ok, frame = capture.retrieve()
                if not ok or frame is None:
                    raise VideoDecodeError(path, f"OpenCV could not decode frame {count}")
                kept[count] = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            count += 1
    finally:
        capture.release()
    return kept, count


def missing_frames_tolerated(declared: int) -> int:
    """Frames a container may over-declare: containers without an index estimate the count from duration × fps,
    which can be off by a frame or two; a damaged stream loses far more."""
    return max(2, declared // 20)


def _decode_with_opencv(path: Path, num_frames: int) -> DecodedVideo:
    import cv2

    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise VideoDecodeError(path, "OpenCV cannot open it (not a video, corrupt, or unsupported codec)")
        fps = float(capture.get(cv2.CAP_PROP_FPS))
        reported = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    finally:
        capture.release()
    # The container's frame count can be wrong: trust it for a first pass, and if the stream turns out to
    # hold a different number of frames, sample again from the true count.
    indices = sample_frame_indices(reported, fps, num_frames) if reported > 0 else []
    kept, total = _opencv_scan(path, set(indices))
    if total < 1:
        raise VideoDecodeError(path, "no frame could be decoded")
    if reported - total > missing_frames_tolerated(reported):
        raise VideoDecodeError(
            path,
            f"only {total} of the {reported} frames its container declares decode (damaged or truncated file); "
            "re-export or remove it",
        )
    if total != reported:
        indices = sample_frame_indices(total, fps, num_frames)
        kept, total = _opencv_scan(path, set(indices))
        if any(i not in kept for i in indices):
            raise VideoDecodeError(path, f"OpenCV decoded {total} frames this time, a different count than before")
    frames = _stack(path, [kept[i] for i in indices])
    return DecodedVideo(frames, indices, fps, total, "opencv", str(path))


def decode_video(path: str | os.PathLike, num_frames: int = NUM_FRAMES, backend: str | None = None) -> DecodedVideo:
    """Decode the `num_frames` frames chosen by `sample_frame_indices` from `path`.

    Args:
        backend: "decord", "opencv", "auto" or None (None reads `MOBILEVIDEOGPT_VIDEO_BACKEND`, default auto:
            decord if installed, OpenCV when decord is missing or cannot open the file).

    Raises:
        VideoDecodeError: the file is missing, empty, not a video/corrupt, or no frame decodes.
        ValueError / ImportError: an unknown backend, or decord forced but not installed.
    """
    path = Path(path)
    forced = _requested_backend(backend)
    if not path.exists():
        raise VideoDecodeError(path, "file not found")
    if not path.is_file():
        raise VideoDecodeError(path, "not a regular file")
    if path.stat().st_size == 0:
        raise VideoDecodeError(path, "the file is empty (0 bytes)")
    if forced == "decord":
        return _decode_with_decord(path, num_frames)
    if forced == "opencv" or _import_decord() is None:
        return _decode_with_opencv(path, num_frames)
    try:
        return _decode_with_decord(path, num_frames)
    except VideoDecodeError as decord_error:
        try:
            return _decode_with_opencv(path, num_frames)
        except VideoDecodeError as opencv_error:
            raise VideoDecodeError(
                path, f"not a readable video (decord: {decord_error.reason}; OpenCV: {opencv_error.reason})"
            ) from opencv_error


def load_video_inputs(
    path: str | os.PathLike,
    num_frames: int = NUM_FRAMES,
    image_size: int = IMAGE_SIZE,
    backend: str | None = None,
) -> VideoInputs:
    """Decode `path` once and apply both preprocessors to the same frames.

    Returns `VideoInputs` with `frames` (T, 3, image_size, image_size) for VideoMamba (squashed resize,
    ImageNet normalisation) and `context_frames` (T, 3, image_size, image_size) for CLIP (shortest-side
    resize, centre crop, CLIP normalisation), T = num_frames. Raises `VideoDecodeError` as `decode_video`.
    """
    decoded = decode_video(path, num_frames, backend)
    return VideoInputs(
        frames=videomamba_transform(decoded.frames, image_size),
        context_frames=clip_transform(decoded.frames, image_size),
        indices=decoded.indices,
        fps=decoded.fps,
        num_total_frames=decoded.num_total_frames,
        path=decoded.path,
    )
