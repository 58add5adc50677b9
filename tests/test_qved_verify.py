"""The QVED pre-flight check (`bash scripts/verify_qved_setup.sh` = `mvgpt verify`): a good setup passes, each kind
of breakage fails and is named, and it accepts exactly what training accepts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from mobilevideogpt.cli import run_command
from mobilevideogpt.qved import verify
from mobilevideogpt.qved.verify import REQUIRED_SCRIPTS, Report

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "verify_qved_setup.sh"


@pytest.fixture
def project(sample_dataset_copy: Path) -> Path:
    """A project root with the sample dataset and every required script (placeholders: only existence and
    zero3.json's JSON validity are checked)."""
    root = sample_dataset_copy.parent
    for relpath in REQUIRED_SCRIPTS:
        (root / relpath).parent.mkdir(parents=True, exist_ok=True)
        (root / relpath).write_text("{}\n" if relpath.endswith(".json") else "# placeholder\n")
    return root


def _verify(project: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable}
    env.pop(verify.MODEL_PATH_ENV_VAR, None)
    return subprocess.run(
        ["bash", str(SCRIPT), "--project-root", str(project), "--dataset-dir", str(project / "dataset"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def _check(capsys, project: Path) -> SimpleNamespace:
    """`mvgpt verify --skip-environment` in this process (the script itself runs in the test above)."""
    args = ["--project-root", str(project), "--dataset-dir", str(project / "dataset"), "--skip-environment"]
    code = run_command("verify", args)
    return SimpleNamespace(returncode=code, stdout=capsys.readouterr().out)


def test_good_setup_passes_with_warnings_only(project):
    run = _verify(project)
    out = run.stdout
    assert run.returncode == 0, out + run.stderr
    assert "SETUP OK" in out and "0 failures" in out
    assert "30 videos in 6 exercise folders, as in the guide" in out
    # Every video is decoded and described; short ones are only warnings.
    assert "squats/00093026.mp4: 13 frames, 12.00 fps, 1.08 s, 176x144" in out
    assert "shorter than 16 frames (frames are repeated)" in out and "[WARN]" in out
    assert "qved_train.json: 30 samples, all usable for training, every video exists" in out
    for package in ("torch", "transformers", "peft", "deepspeed", "cv2", "mobilevideogpt"):
        assert f"[ OK ] {package} " in out
    assert "== GPU ==" in out and "== Base checkpoint (Amshaker/Mobile-VideoGPT-0.5B) ==" in out
    assert "\033[" not in out  # no colour codes when not writing to a terminal


def test_corrupted_video_fails_and_is_named(project, capsys):
    broken = project / "dataset" / "squats" / "00093026.mp4"
    broken.write_bytes(os.urandom(3000))
    run = _check(capsys, project)
    assert run.returncode == 1
    assert "[FAIL] squats/00093026.mp4: unreadable" in run.stdout
    assert "SETUP INCOMPLETE" in run.stdout


def test_a_video_missing_most_of_its_frames_fails(project):
    from tests.test_video import damage_middle

    videos = sorted((project / "dataset").glob("*/*.mp4"), key=lambda p: p.stat().st_size)
    damage_middle(videos[-1], videos[-1])
    report = Report()
    verify.check_videos_decode(report, videos[-2:], project / "dataset")
    assert len(report.failures) == 1 and videos[-1].name in report.failures[0]
    assert "frames its container declares decode" in report.failures[0]


def test_an_empty_label_file_fails(project):
    (project / "dataset" / "ground_truth.json").write_text("[]")
    report = Report()
    verify.check_dataset(report, project / "dataset")
    assert any("ground_truth.json holds no label records" in failure for failure in report.failures), report.failures


def test_missing_video_fails_and_is_named(project, capsys):
    (project / "dataset" / "tricep_stretch" / "00002012.mp4").unlink()
    run = _check(capsys, project)
    assert run.returncode == 1
    assert "dataset/tricep_stretch/00002012.mp4" in run.stdout
    assert "qved_train.json: 1 videos not found" in run.stdout
    assert "manifest.json: 1 of 30 videos missing" in run.stdout


def test_invalid_json_and_bad_schema_fail(project, capsys):
    dataset = project / "dataset"
    (dataset / "qved_train.json").write_text('[{"video": "dataset/squats/00093026.mp4",')
    run = _check(capsys, project)
    assert run.returncode == 1 and "qved_train.json is not valid JSON" in run.stdout
    (dataset / "qved_train.json").write_text(
        json.dumps([{"video": "dataset/squats/00093026.mp4", "conversations": [{"from": "gpt", "value": "x"}]}])
    )
    run = _check(capsys, project)
    assert run.returncode == 1 and "sample 0: no answer (assistant/gpt turn) after a question" in run.stdout


@pytest.mark.parametrize(
    "turns, accepted",
    [
        ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], True),  # trains: passes
        ([{"from": "human", "value": "q"}, {"from": "gpt", "value": "<video> a"}], False),  # training rejects
        ([{"from": "human", "value": "<video> q <video> r"}, {"from": "gpt", "value": "a"}], False),
    ],
)
def test_verify_accepts_exactly_what_training_accepts(project, turns, accepted, qwen25_tokenizer, capsys):
    from mobilevideogpt.config import resolve_datasets
    from mobilevideogpt.data.dataset import SupervisedVideoDataset

    dataset = project / "dataset"
    (dataset / "qved_train.json").write_text(json.dumps([{"video": "dataset/squats/00093026.mp4", "conversations": turns}]))
    run = _check(capsys, project)
    assert (run.returncode == 0) == accepted, run.stdout
    entries = resolve_datasets("QVED_TRAIN", root=project)
    if accepted:
        assert len(SupervisedVideoDataset(entries, qwen25_tokenizer, num_visual_tokens=10)) == 1
    else:
        assert "training would reject" in run.stdout
        with pytest.raises(ValueError, match="no usable samples"):
            SupervisedVideoDataset(entries, qwen25_tokenizer, num_visual_tokens=10)


def test_missing_script_and_missing_dataset_fail(project, capsys):
    (project / "inference.py").unlink()
    run = _check(capsys, project)
    assert run.returncode == 1 and "[FAIL] inference.py missing" in run.stdout
    shutil.rmtree(project / "dataset")
    run = _check(capsys, project)
    assert run.returncode == 1 and "dataset folder not found" in run.stdout


def test_other_classes_and_counts_are_only_warnings(project, capsys):
    dataset = project / "dataset"
    shutil.rmtree(dataset / "knee_circles")
    manifest = {k: v for k, v in json.loads((dataset / "manifest.json").read_text()).items() if v != "knee_circles"}
    (dataset / "manifest.json").write_text(json.dumps(manifest))
    train = [s for s in json.loads((dataset / "qved_train.json").read_text()) if "knee_circles" not in s["video"]]
    (dataset / "qved_train.json").write_text(json.dumps(train))
    run = _check(capsys, project)
    assert run.returncode == 0, run.stdout
    assert "knee_circles/ not found" in run.stdout and "25 videos in 5 folders" in run.stdout
    assert "5 of 30 records would be skipped" in run.stdout  # ground_truth.json still lists them


def test_help():
    run = subprocess.run(
        ["bash", str(SCRIPT), "--help"], capture_output=True, text=True, env={**os.environ, "PYTHON": sys.executable}
    )
    assert run.returncode == 0 and "--dataset-dir" in run.stdout and "--model-path" in run.stdout


def _checkpoint_report(model_path: str | None) -> tuple[Report, str]:
    lines: list[str] = []
    report = Report(emit=lambda kind, status, text: lines.append(text))
    verify.check_checkpoint(report, model_path)
    return report, "\n".join(lines)


def test_checkpoint_sources(tmp_path, monkeypatch):
    hub_constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.delenv(verify.MODEL_PATH_ENV_VAR, raising=False)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    report, out = _checkpoint_report(None)
    assert report.counts["WARN"] == 1 and "not downloaded yet" in out and "huggingface-cli download" in out
    # A hub-cache snapshot, laid out as huggingface_hub stores it.
    repo = tmp_path / "hub" / "models--Amshaker--Mobile-VideoGPT-0.5B"
    snapshot = repo / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    (snapshot / "config.json").write_text("{}")
    (snapshot / "model.safetensors").write_bytes(b"")
    report, out = _checkpoint_report(None)
    assert report.counts["OK"] == 1 and "in the Hugging Face cache" in out and "model.safetensors" in out
    # A local folder given by flag or environment variable.
    local = tmp_path / "checkpoint"
    local.mkdir()
    (local / "config.json").write_text("{}")
    assert _checkpoint_report(str(local))[0].counts["OK"] == 1
    monkeypatch.setenv(verify.MODEL_PATH_ENV_VAR, str(local))
    assert "local folder" in _checkpoint_report(None)[1]
    report, out = _checkpoint_report(str(tmp_path / "nowhere"))
    assert report.counts["FAIL"] == 1 and "does not exist" in out
