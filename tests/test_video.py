"""Frame sampling rules and video decoding (decord, OpenCV, errors) on generated videos."""

from __future__ import annotations

import math
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from mobilevideogpt.data import video
from mobilevideogpt.data.transforms import clip_transform, videomamba_transform
from mobilevideogpt.data.video import (
    BACKEND_ENV_VAR,
    VideoDecodeError,
    decode_video,
    load_video_inputs,
    sample_frame_indices,
)
from mobilevideogpt.qved.sample_dataset import write_video

# ---------------------------------------------------------------- sampling rules


def test_fact_sheet_example_20s_at_30fps():
    # Upstream `eval/video_encoding.py::_get_rawvideo_dec`: 20 grid points (0, 30, ..., 570) → linspace picks grid positions
    # 0,1,2,3,5,6,7,8,10,11,12,13,15,16,17,19.
    positions = [0, 1, 2, 3, 5, 6, 7, 8, 10, 11, 12, 13, 15, 16, 17, 19]
    assert sample_frame_indices(600, 30.0) == [30 * p for p in positions]


def test_exactly_16_grid_points_are_the_grid():
    assert sample_frame_indices(480, 30.0) == list(range(0, 480, 30))


def test_fewer_grid_points_spread_with_the_published_stride():
    # 10 s at 30 fps: 10 grid points < 16, so stride = 299 // 15 = 19.
    assert sample_frame_indices(300, 30.0) == [19 * i for i in range(16)]
    # 16 frames at 30 fps: one grid point, stride 15 // 15 = 1: every frame once.
    assert sample_frame_indices(16, 30.0) == list(range(16))


def test_fps_is_rounded_to_a_whole_step():
    # 29.97 fps → step 30, as round(fps) in the published code.
    assert sample_frame_indices(600, 29.97) == sample_frame_indices(600, 30.0)


def test_short_videos_repeat_frames_evenly_instead_of_padding():
    assert sample_frame_indices(10, 30.0) == [0, 1, 1, 2, 2, 3, 4, 4, 5, 5, 6, 7, 7, 8, 8, 9]
    assert sample_frame_indices(1, 30.0) == [0] * 16
    assert sample_frame_indices(2, 30.0) == [0] * 8 + [1] * 8


@pytest.mark.parametrize("fps", [0.0, -5.0, float("nan"), float("inf"), 0.3])
def test_unknown_or_tiny_fps_uses_every_frame_as_a_grid_point(fps):
    expected = np.linspace(0, 99, 16).astype(int).tolist()
    assert sample_frame_indices(100, fps) == expected


def test_huge_fps_gives_one_grid_point_then_the_stride_rule():
    assert sample_frame_indices(100, 1000.0) == [6 * i for i in range(16)]


def test_other_frame_counts():
    assert sample_frame_indices(600, 30.0, num_frames=8) == [30 * p for p in (0, 2, 5, 8, 10, 13, 16, 19)]
    assert sample_frame_indices(5, 30.0, num_frames=1) == [0]


@pytest.mark.parametrize("total", [1, 2, 7, 15, 16, 17, 31, 100, 451, 1000, 10_000])
@pytest.mark.parametrize("fps", [0.0, 0.5, 1.0, 7.5, 24.0, 29.97, 60.0, float("nan")])
def test_always_num_frames_sorted_valid_indices(total, fps):
    indices = sample_frame_indices(total, fps)
    assert len(indices) == 16
    assert indices == sorted(indices)
    assert 0 <= indices[0] and indices[-1] < total
    assert all(isinstance(i, int) for i in indices)
    if total >= 16:
        assert len(set(indices)) == 16  # repetition only when the video is too short


def test_invalid_sampling_arguments():
    with pytest.raises(ValueError, match="at least one frame"):
        sample_frame_indices(0, 30.0)
    with pytest.raises(ValueError, match="num_frames"):
        sample_frame_indices(10, 30.0, num_frames=0)


# ---------------------------------------------------------------- decoding


def _numbered_video(path: Path, num_frames: int, fps: int = 10, size: tuple[int, int] = (96, 64)) -> Path:
    """Frame t shows a white 3-px column at x = 3t (readable through codec noise) and a red square."""
    width, height = size
    frames = []
    for t in range(num_frames):
        frame = np.zeros((height, width, 3), dtype=np.uint8)
        frame[24:, 3 * t : 3 * t + 3] = 255
        frame[:16, :16] = (0, 0, 255)  # BGR red
        frames.append(frame)
    write_video(path, frames, fps)
    return path


def _frame_numbers(frames: np.ndarray) -> list[int]:
    """Which source frame each decoded frame is, from the position of its white column."""
    columns = frames[:, 24:, :, :].mean(axis=(1, 3))
    return [int(round((int(np.argmax(c)) - 1) / 3)) for c in columns]


@pytest.fixture(scope="module")
def numbered_video(tmp_path_factory) -> Path:
    return _numbered_video(tmp_path_factory.mktemp("videos") / "numbered.mp4", 30)


def test_decoded_frames_are_the_sampled_rgb_frames(numbered_video):
    for backend in ("decord", "opencv"):
        decoded = decode_video(numbered_video, backend=backend)
        assert decoded.backend == backend
        assert decoded.frames.shape == (16, 64, 96, 3) and decoded.frames.dtype == np.uint8
        assert decoded.num_total_frames == 30 and decoded.fps == pytest.approx(10.0)
        assert decoded.indices == sample_frame_indices(30, 10.0)
        assert _frame_numbers(decoded.frames) == decoded.indices
        red = decoded.frames[:, 4:12, 4:12].mean(axis=(1, 2))
        assert (red[:, 0] > 200).all() and (red[:, 2] < 60).all()  # RGB order, not BGR


def test_decord_and_opencv_agree_on_the_sample_dataset(sample_dataset_dir):
    pytest.importorskip("decord")
    videos = sorted(sample_dataset_dir.glob("*/*.mp4"))[::4]
    assert any(cv2.VideoCapture(str(p)).get(cv2.CAP_PROP_FRAME_COUNT) < 16 for p in videos)
    for path in videos:
        a = decode_video(path, backend="decord")
        b = decode_video(path, backend="opencv")
        assert a.indices == b.indices and a.num_total_frames == b.num_total_frames
        assert a.fps == pytest.approx(b.fps)
        difference = np.abs(a.frames.astype(np.int16) - b.frames.astype(np.int16))
        assert difference.max() <= 3 and difference.mean() < 0.5, path


def test_backend_forced_by_environment_variable(numbered_video, monkeypatch):
    monkeypatch.setenv(BACKEND_ENV_VAR, "opencv")
    assert decode_video(numbered_video).backend == "opencv"
    monkeypatch.setenv(BACKEND_ENV_VAR, "decord")
    assert decode_video(numbered_video).backend == "decord"
    monkeypatch.setenv(BACKEND_ENV_VAR, "ffmpeg")
    with pytest.raises(ValueError, match="unknown video backend 'ffmpeg'"):
        decode_video(numbered_video)


def test_opencv_is_used_when_decord_is_not_installed(numbered_video, monkeypatch):
    monkeypatch.setattr(video, "_import_decord", lambda: None)
    assert decode_video(numbered_video).backend == "opencv"
    with pytest.raises(ImportError, match="decord is not installed"):
        decode_video(numbered_video, backend="decord")


def test_opencv_takes_over_when_decord_cannot_open_a_file(numbered_video, monkeypatch):
    def refuse(path, num_frames):
        raise VideoDecodeError(path, "decord cannot open it")

    monkeypatch.setattr(video, "_decode_with_decord", refuse)
    assert decode_video(numbered_video).backend == "opencv"


class _LyingCapture:
    """cv2.VideoCapture whose reported frame count is wrong, as some containers are."""

    real = cv2.VideoCapture

    def __init__(self, path, reported):
        self._capture = self.real(path)
        self._reported = reported

    def get(self, prop):
        return float(self._reported) if prop == cv2.CAP_PROP_FRAME_COUNT else self._capture.get(prop)

    def __getattr__(self, name):
        return getattr(self._capture, name)


@pytest.mark.parametrize("reported", [0, 12, 31, 32])
def test_opencv_is_robust_to_a_wrong_frame_count(numbered_video, monkeypatch, reported):
    """No count, an undercount, or an estimate a frame or two high: the frames that decode are sampled."""
    expected = decode_video(numbered_video, backend="decord")
    monkeypatch.setattr(cv2, "VideoCapture", lambda path: _LyingCapture(path, reported))
    decoded = decode_video(numbered_video, backend="opencv")
    assert decoded.num_total_frames == 30
    assert decoded.indices == expected.indices
    assert np.abs(decoded.frames.astype(int) - expected.frames.astype(int)).max() <= 3


def test_frames_missing_from_what_the_container_declares_are_an_error(numbered_video, monkeypatch):
    monkeypatch.setattr(cv2, "VideoCapture", lambda path: _LyingCapture(path, 200))
    with pytest.raises(VideoDecodeError, match="only 30 of the 200 frames its container declares decode"):
        decode_video(numbered_video, backend="opencv")


def test_very_short_video_has_repeated_real_frames(tmp_path):
    path = _numbered_video(tmp_path / "three.mp4", 3)
    for backend in ("decord", "opencv"):
        decoded = decode_video(path, backend=backend)
        assert decoded.indices == [0] * 4 + [1] * 8 + [2] * 4  # nearest frame of linspace(0, 2, 16)
        assert _frame_numbers(decoded.frames) == decoded.indices


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _make_dir(path: Path) -> Path:
    path.mkdir()
    return path


@pytest.mark.parametrize("backend", ["auto", "decord", "opencv"])
@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda d: d / "missing.mp4", "file not found"),
        (lambda d: _write(d / "empty.mp4", b""), "empty"),
        (lambda d: _write(d / "garbage.mp4", np.random.default_rng(0).bytes(4096)), "cannot open"),
        (lambda d: _make_dir(d / "folder.mp4"), "not a regular file"),
    ],
    ids=["missing", "empty", "garbage", "directory"],
)
def test_bad_files_raise_a_clear_error_naming_the_file(tmp_path, backend, make, reason):
    path = make(tmp_path)
    with pytest.raises(VideoDecodeError) as info:
        decode_video(path, backend=backend)
    assert str(path) in str(info.value) and reason in str(info.value)
    assert info.value.path == str(path)


def test_truncated_video_is_an_error(sample_dataset_dir, tmp_path):
    source = sorted(sample_dataset_dir.glob("squats/*.mp4"))[1]
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(source.read_bytes()[:2000])
    with pytest.raises(VideoDecodeError, match="truncated.mp4"):
        decode_video(truncated)


def damage_middle(source: Path, target: Path) -> Path:
    """`source` with 30-60 % of its bytes zeroed: the container still declares every frame, most do not decode."""
    data = bytearray(source.read_bytes())
    data[int(len(data) * 0.3) : int(len(data) * 0.6)] = bytes(int(len(data) * 0.6) - int(len(data) * 0.3))
    target.write_bytes(bytes(data))
    return target


@pytest.mark.parametrize("backend", ["auto", "opencv"])
def test_a_damaged_middle_is_an_error_not_a_short_video(sample_dataset_dir, tmp_path, backend):
    source = max(sample_dataset_dir.glob("*/*.mp4"), key=lambda p: p.stat().st_size)
    assert decode_video(source).num_total_frames >= 40
    damaged = damage_middle(source, tmp_path / "damaged.mp4")
    with pytest.raises(VideoDecodeError) as info:
        decode_video(damaged, backend=backend)
    assert info.value.path == str(damaged) and str(damaged) in str(info.value)
    assert re.search(r"only \d+ of the \d+ frames its container declares decode", str(info.value))


def test_load_video_inputs_applies_both_preprocessors_to_the_same_frames(numbered_video):
    inputs = load_video_inputs(numbered_video)
    frames = decode_video(numbered_video).frames
    assert inputs.frames.shape == inputs.context_frames.shape == (16, 3, 224, 224)
    assert inputs.frames.dtype == inputs.context_frames.dtype == torch.float32
    assert torch.equal(inputs.frames, videomamba_transform(frames))
    assert torch.equal(inputs.context_frames, clip_transform(frames))
    assert inputs.indices == sample_frame_indices(30, 10.0)
    assert inputs.num_total_frames == 30 and math.isclose(inputs.fps, 10.0)
    assert inputs.path == str(numbered_video)
