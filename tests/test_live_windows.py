"""Window plans: the frames of each window are the training sampler's, windows overlap on shared frames, and
a frame buffer holding only `keeps` frames can serve every window."""

from __future__ import annotations

import pytest

from mobilevideogpt.data.video import sample_frame_indices
from mobilevideogpt.live.defaults import DEFAULT_STRIDE_S, DEFAULT_WINDOW_S
from mobilevideogpt.live.windows import WindowPlan


def test_defaults_at_30_fps_give_the_sampler_frames_and_share_three_quarters():
    plan = WindowPlan.create(30.0)
    assert (plan.window_s, plan.stride_s) == (DEFAULT_WINDOW_S, DEFAULT_STRIDE_S) == (8.0, 2.0)
    assert (plan.window_frames, plan.stride_frames, plan.lattice) == (240, 60, 15)
    full = plan.window(10)
    assert (full.start_frame, full.end_frame) == (360, 600)
    assert list(full.frame_indices) == [360 + i for i in sample_frame_indices(240, 30.0, 16)]
    assert full.frame_indices[1] - full.frame_indices[0] == 15  # 16 frames every 0.5 s
    following = plan.window(11)
    assert len(set(full.frame_indices) & set(following.frame_indices)) == 12
    assert (full.start_s, full.end_s) == (12.0, 20.0)


def test_stride_is_rounded_to_sampler_steps_so_windows_share_frames():
    plan = WindowPlan.create(25.0)
    assert plan.lattice == 13 and plan.stride_frames == 52  # 2.08 s instead of 2 s
    assert plan.stride_s == pytest.approx(2.08)
    shared = set(plan.window(7).frame_indices) & set(plan.window(8).frame_indices)
    assert len(shared) == 12


def test_first_windows_start_at_zero_and_grow():
    plan = WindowPlan.create(10.0, window_s=8, stride_s=2)
    firsts = [plan.window(k) for k in (1, 2, 3, 4, 5)]
    assert [(w.start_s, w.end_s) for w in firsts] == [(0, 2), (0, 4), (0, 6), (0, 8), (2, 10)]
    for window in firsts:
        picked = sample_frame_indices(window.num_window_frames, 10.0, 16)
        assert list(window.frame_indices) == [window.start_frame + i for i in picked]


def test_windows_over_a_video_and_a_video_shorter_than_a_stride():
    plan = WindowPlan.create(10.0, window_s=4, stride_s=2)
    windows = plan.windows(95)  # 9.5 s: the last 1.5 s start no window of their own
    assert [w.end_s for w in windows] == [2, 4, 6, 8]
    assert all(0 <= i < 95 for w in windows for i in w.frame_indices)
    (whole,) = plan.windows(13)
    assert (whole.index, whole.start_frame, whole.end_frame) == (0, 0, 13)
    assert plan.windows(0) == []


@pytest.mark.parametrize(("fps", "window_s", "stride_s", "num_frames"), [(30, 8, 2, 16), (25, 8, 2, 16), (24, 20, 3, 16), (10, 4, 2, 4), (7.5, 3, 1, 16)])
def test_keeps_every_frame_any_window_samples_and_few_others(fps, window_s, stride_s, num_frames):
    plan = WindowPlan.create(fps, window_s, stride_s, num_frames)
    total = int(fps * 120)
    sampled = {i for w in plan.windows(total) for i in w.frame_indices} | set(plan.whole(plan.stride_frames - 1 or 1).frame_indices)
    kept = {i for i in range(total) if plan.keeps(i)}
    assert sampled <= kept
    assert len(kept) < total / 2 or plan.lattice == 1


@pytest.mark.parametrize(
    "kwargs", [{"fps": 0}, {"fps": float("nan")}, {"fps": 30, "window_s": 0}, {"fps": 30, "stride_s": -1}, {"fps": 30, "num_frames": 0}]
)
def test_unusable_plans_are_refused(kwargs):
    with pytest.raises(ValueError):
        WindowPlan.create(**kwargs)
