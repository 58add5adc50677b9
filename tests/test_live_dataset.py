"""Long labelled sessions → window samples in the qved_*.json format that the training dataset reads."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest

from mobilevideogpt.data.dataset import SupervisedVideoDataset
from mobilevideogpt.data.paths import resolve_annotation_video
from mobilevideogpt.data.video import decode_video
from mobilevideogpt.live.labels import load_labels
from mobilevideogpt.live.suppress import NO_FEEDBACK_ANSWER
from mobilevideogpt.live.windows import WindowPlan
from mobilevideogpt.qved.convert import QvedInputError
from mobilevideogpt.qved.sessions import make_sessions
from mobilevideogpt.qved.windows import LIVE_PROMPT, convert_windows

# Hand-placed feedback on a 15 s session (three 5 s exercises at 10 fps).
FEEDBACK = [
    {"time": 0.0, "text": "A - first"},
    {"time": 5.0, "text": "B - second"},
    {"time": 5.5, "text": "C - third"},
    {"time": 13.9, "text": "D - fourth"},
    {"time": 14.5, "text": "E - after the last window"},
]
# Windows of 4 s every 2 s end at 2, 4, …, 14 s (the last second starts no window); each answers with the
# latest feedback inside it.
EXPECTED = [
    (0.0, 2.0, "A - first"),
    (0.0, 4.0, "A - first"),
    (2.0, 6.0, "C - third"),  # B and C are both inside: the later one
    (4.0, 8.0, "C - third"),
    (6.0, 10.0, NO_FEEDBACK_ANSWER),
    (8.0, 12.0, NO_FEEDBACK_ANSWER),
    (10.0, 14.0, "D - fourth"),
]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """`<root>/dataset/sessions/` with three synthetic 15 s sessions; session_00 carries FEEDBACK."""
    root = tmp_path_factory.mktemp("live_project")
    labels = make_sessions(root / "dataset" / "sessions", count=3, seed=1, segment_s=(5.0, 5.0), size=(96, 72))
    data = json.loads(labels.read_text())
    data["session_00.mp4"] = FEEDBACK
    labels.write_text(json.dumps(data))
    return root


def test_each_window_answers_the_feedback_given_in_it(project):
    dataset = project / "dataset"
    warnings = []
    written = convert_windows(dataset / "sessions" / "sessions.json", dataset, window_s=4, stride_s=2,
                              log=lambda m: None, warn=warnings.append)
    records = json.loads(written["train"].read_text())
    first = [r for r in records if r["session"] == "session_00.mp4"]
    got = [(r["window_start"], r["window_end"], r["conversations"][1]["value"]) for r in first]
    assert got == EXPECTED
    assert all(r["conversations"][0] == {"from": "human", "value": LIVE_PROMPT} for r in records)
    assert LIVE_PROMPT == "Analyze this exercise video and provide corrective feedback."
    assert all(r["video"].startswith("dataset/windows/") and r["split"] == "train" for r in records)
    assert len(records) == 3 * 7
    assert any("session_00.mp4: 1 feedback item(s) after the last window" in w for w in warnings)


def test_window_clips_hold_exactly_the_frames_the_live_loop_samples(project):
    dataset = project / "dataset"
    written = convert_windows(dataset / "sessions" / "sessions.json", dataset, window_s=4, stride_s=2,
                              log=lambda m: None, warn=lambda m: None)
    record = json.loads(written["train"].read_text())[4]  # a full window, [6, 10] s of session_00
    plan = WindowPlan.create(10.0, 4, 2)
    window = plan.window(int(record["window_end"] / 2))
    capture = cv2.VideoCapture(str(dataset / "sessions" / record["session"]))
    source_frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        source_frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    capture.release()
    clip = resolve_annotation_video(record["video"], written["train"])
    decoded = decode_video(clip)  # the training loader's decoder and sampler
    assert decoded.indices == list(range(16))
    assert np.array_equal(decoded.frames, np.stack([source_frames[i] for i in window.frame_indices]))


def test_training_dataset_reads_window_samples(project, qwen25_tokenizer):
    dataset = project / "dataset"
    written = convert_windows(dataset / "sessions" / "sessions.json", dataset, window_s=4, stride_s=2,
                              log=lambda m: None, warn=lambda m: None)
    samples = SupervisedVideoDataset(
        [{"annotation_path": written["train"]}], qwen25_tokenizer, num_visual_tokens=2402, model_max_length=4096
    )
    assert len(samples) == 21 and not samples.skipped
    item = samples[2]
    assert item["images"].shape == item["context_images"].shape == (16, 3, 224, 224)


def test_splits_are_by_session_and_reruns_replace_clips(project):
    dataset = project / "dataset"
    stale = dataset / "windows" / "session_01" / "00099_0-1.mkv"
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_bytes(b"old")
    keep = dataset / "windows" / "session_01" / "notes.txt"
    keep.write_text("mine")
    written = convert_windows(dataset / "sessions" / "sessions.json", dataset, window_s=4, stride_s=2,
                              val_ratio=0.34, log=lambda m: None, warn=lambda m: None)
    assert set(written) == {"train", "val"}
    sessions = {split: {r["session"] for r in json.loads(path.read_text())} for split, path in written.items()}
    assert len(sessions["val"]) == 1 and len(sessions["train"]) == 2 and not sessions["val"] & sessions["train"]
    assert not stale.exists() and keep.read_text() == "mine"


def test_unusable_labels_are_reported(tmp_path, project):
    with pytest.raises(QvedInputError, match="not found"):
        convert_windows(tmp_path / "missing.json", tmp_path)
    (tmp_path / "labels.json").write_text(json.dumps({"nowhere.mp4": [{"time": 1, "text": "x"}]}))
    with pytest.raises(QvedInputError, match="nowhere.mp4"):
        convert_windows(tmp_path / "labels.json", tmp_path)
    shutil.copy(project / "dataset" / "sessions" / "session_01.mp4", tmp_path / "a.mp4")
    (tmp_path / "labels.json").write_text(json.dumps({"a.mp4": [{"time": 1, "text": ""}]}))
    with pytest.raises(QvedInputError, match="'text' must be a non-empty string"):
        convert_windows(tmp_path / "labels.json", tmp_path)
    assert load_labels(project / "dataset" / "sessions" / "sessions.json")[0].feedback[0].text == "A - first"
