"""The synthetic sample dataset: the guide's layout, QEVD-style labels, determinism, overwrite protection."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

from mobilevideogpt.qved import QVED_EXERCISES
from mobilevideogpt.qved.sample_dataset import SYNTHETIC_MARKER, make_sample_dataset, plan_videos

REPO = Path(__file__).resolve().parents[1]
QUIET = {"log": lambda message: None}


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_matches_the_guide(sample_dataset_dir):
    folders = sorted(p.name for p in sample_dataset_dir.iterdir() if p.is_dir())
    assert folders == sorted(QVED_EXERCISES)
    for name in QVED_EXERCISES:
        videos = sorted((sample_dataset_dir / name).glob("*.mp4"))
        assert len(videos) == 5
        assert all(len(v.stem) == 8 and v.stem.isdigit() for v in videos)
    for name in ("qved_train.json", "ground_truth.json", "manifest.json", "README.txt"):
        assert (sample_dataset_dir / name).is_file()
    assert (sample_dataset_dir / "README.txt").read_text().startswith(SYNTHETIC_MARKER)


def test_videos_vary_and_some_are_shorter_than_16_frames(sample_dataset_dir):
    facts = []
    for path in sorted(sample_dataset_dir.glob("*/*.mp4")):
        capture = cv2.VideoCapture(str(path))
        count, fps = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), capture.get(cv2.CAP_PROP_FPS)
        size = (int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)))
        ok, first = capture.read()
        capture.release()
        assert ok and first.shape[:2] == size[::-1]
        facts.append((count, fps, size))
    counts = [c for c, _, _ in facts]
    assert 1 <= sum(c < 16 for c in counts) < len(counts)
    assert min(counts) >= 10 and max(counts) <= 60
    assert len({fps for _, fps, _ in facts}) >= 3 and len({size for _, _, size in facts}) >= 3
    assert any(w < h for _, _, (w, h) in facts)  # a portrait video for the CLIP centre crop


def test_labels_manifest_and_annotations(sample_dataset_dir):
    ground_truth = json.loads((sample_dataset_dir / "ground_truth.json").read_text())
    manifest = json.loads((sample_dataset_dir / "manifest.json").read_text())
    annotations = json.loads((sample_dataset_dir / "qved_train.json").read_text())
    assert len(ground_truth) == len(manifest) == len(annotations) == 30
    for key, exercise in manifest.items():
        assert key.startswith("dataset/") and key.split("/")[1] == exercise
        assert (sample_dataset_dir.parent / key).is_file()
    for record in ground_truth:
        assert set(record) == {"video_path", "labels", "labels_descriptive"}
        exercise = record["video_path"].split("/")[1].replace("_", " ")
        assert record["labels"][0].startswith(exercise) and " - " in record["labels"][0]
        assert record["labels_descriptive"].startswith(exercise) and " - " in record["labels_descriptive"]
    # The guide's example record exists verbatim (and its inference example video too).
    assert {
        "video": "dataset/tricep_stretch/00002012.mp4",
        "conversations": [
            {"from": "human", "value": "Analyze this tricep stretch video and provide corrective feedback."},
            {"from": "gpt", "value": "tricep stretch (right arm) - User is holding the stretch"},
        ],
        "split": "train",
    } in annotations
    assert (sample_dataset_dir / "squats" / "00093026.mp4").is_file()


def test_generation_is_deterministic(tmp_path):
    make_sample_dataset(tmp_path / "a" / "dataset", **QUIET)
    make_sample_dataset(tmp_path / "b" / "dataset", **QUIET)
    first, second = _files(tmp_path / "a" / "dataset"), _files(tmp_path / "b" / "dataset")
    assert len(first) == 30 + 5 and first == second  # + README, labels, manifest, qved_train, the record
    make_sample_dataset(tmp_path / "c" / "dataset", seed=1, **QUIET)
    assert _files(tmp_path / "c" / "dataset") != first


def test_refuses_to_overwrite_other_data(tmp_path):
    real = tmp_path / "dataset"
    (real / "squats").mkdir(parents=True)
    (real / "squats" / "real_video.mp4").write_bytes(b"real data")
    with pytest.raises(FileExistsError, match="--force"):
        make_sample_dataset(real, **QUIET)
    assert not (real / "manifest.json").exists()
    make_sample_dataset(real, force=True, **QUIET)
    assert (real / "squats" / "real_video.mp4").read_bytes() == b"real data"
    assert (real / "manifest.json").is_file()


def test_never_replaces_a_file_it_did_not_write(tmp_path):
    """--force adds the sample beside other data; a real video or label file with a sample's name is never replaced,
    nor a sample file the user has since replaced with real data (as README.txt suggests)."""
    real = tmp_path / "dataset"
    (real / "squats").mkdir(parents=True)
    (real / "squats" / "00093026.mp4").write_bytes(b"a real squats video")
    (real / "ground_truth.json").write_text("[]")
    with pytest.raises(FileExistsError, match="00093026.mp4.*ground_truth.json.*not written by sample-data"):
        make_sample_dataset(real, force=True, **QUIET)
    assert sorted(p.name for p in real.rglob("*")) == ["00093026.mp4", "ground_truth.json", "squats"]
    assert (real / "squats" / "00093026.mp4").read_bytes() == b"a real squats video"

    sample = tmp_path / "sample"
    make_sample_dataset(sample, **QUIET)
    (sample / "tricep_stretch" / "00002012.mp4").write_bytes(b"the user's real video, same name")
    with pytest.raises(FileExistsError, match="00002012.mp4 exist and were not written by sample-data"):
        make_sample_dataset(sample, seed=2, **QUIET)
    assert (sample / "tricep_stretch" / "00002012.mp4").read_bytes() == b"the user's real video, same name"


def test_regenerating_a_sample_replaces_its_old_videos(tmp_path):
    out = tmp_path / "dataset"
    out.mkdir()
    (out / ".gitkeep").touch()  # an empty checkout folder is not "data"
    make_sample_dataset(out, seed=3, **QUIET)
    old = {spec.relpath for spec in plan_videos(3)}
    make_sample_dataset(out, seed=4, **QUIET)
    new = {spec.relpath for spec in plan_videos(4)}
    on_disk = {p.relative_to(out).as_posix() for p in out.glob("*/*.mp4")}
    assert on_disk == new and not (old - new) & on_disk


def test_cli_help_says_synthetic_and_refusal_is_one_line(tmp_path):
    script = [sys.executable, "-m", "mobilevideogpt", "sample-data"]
    help_text = subprocess.run([*script, "--help"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert "SYNTHETIC" in help_text and "--out" in help_text and "--force" in help_text
    (tmp_path / "mine.txt").write_text("not yours")
    refused = subprocess.run([*script, "--out", str(tmp_path)], cwd=REPO, capture_output=True, text=True)
    assert refused.returncode == 1
    assert refused.stderr.startswith("error:") and "Traceback" not in refused.stderr


def test_videos_vary_within_a_class_and_across_seeds_and_show_the_arm():
    from mobilevideogpt.qved.sample_dataset import render_frames

    first, second = plan_videos(0, videos_per_exercise=2)[:2]
    assert (first.phase, first.amplitude) != (second.phase, second.amplitude)
    other_seed = plan_videos(1, videos_per_exercise=2)[0]
    assert other_seed.name != first.name or other_seed.phase != first.phase
    a, b = (render_frames(spec, class_index=0)[0] for spec in (first, second))
    assert a.shape != b.shape or not (a == b).all()
    assert len(plan_videos(0, videos_per_exercise=20)) == 120
    # The arm bar points the way the label says: mirror images for the two arms of one video.
    left, right = (dataclasses.replace(first, arm=arm, phase=0.0, num_frames=4) for arm in ("left", "right"))
    l_frame, r_frame = render_frames(left, 0)[0], render_frames(right, 0)[0]
    assert not (l_frame == r_frame).all()
