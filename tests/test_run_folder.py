"""One run per output folder: the claim, `--resume` / `--overwrite`, and nothing else's checkpoints ever picked."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from mobilevideogpt.checkpoints import (
    COMPLETE_MARKER,
    FINAL_CHECKPOINT,
    RUN_RECORD,
    STAGING_DIR,
    checkpoint_problems,
    latest_complete_checkpoint,
    mark_complete,
    read_run_id,
    resolve_model_path,
    resume_checkpoint,
)
from mobilevideogpt.errors import RunFolderError
from mobilevideogpt.train.run_folder import check_run_folder, claim_run_folder


def fake_checkpoint(run: Path, name: str, run_id: str | None, payload: bytes = b"weights") -> Path:
    folder = run / name
    (folder / "global_step1").mkdir(parents=True)
    (folder / "global_step1" / "optim_states.pt").write_bytes(payload)
    mark_complete(folder, 1, run_id)
    return folder


def test_a_folder_holds_one_run(tmp_path):
    run = tmp_path / "run"
    first = claim_run_folder(run, resume=False, overwrite=False)
    assert read_run_id(run) == first
    (run / "checkpoint-8").mkdir()
    (run / "notes.txt").write_text("the user's own file")
    with pytest.raises(RunFolderError) as info:
        claim_run_folder(run, resume=False, overwrite=False)
    message = str(info.value)
    assert f"run {first}" in message and "checkpoint-8" in message
    assert "--resume" in message and "new OUTPUT_DIR" in message and "--overwrite" in message
    assert "\n" not in message

    assert claim_run_folder(run, resume=True, overwrite=False) == first
    (run / STAGING_DIR / "checkpoint-9").mkdir(parents=True)  # a save interrupted by a crash
    (run / "hyperparameters.json").write_text("{}")
    second = claim_run_folder(run, resume=False, overwrite=True)
    assert second != first and read_run_id(run) == second
    assert sorted(p.name for p in run.iterdir()) == sorted([RUN_RECORD, "notes.txt"])

    with pytest.raises(RunFolderError, match="pass only one"):
        check_run_folder(run, resume=True, overwrite=True)


def test_checkpoints_without_a_run_record_are_not_resumed_as_one_run(tmp_path):
    fake_checkpoint(tmp_path, "checkpoint-4", run_id="someone-else")
    with pytest.raises(RunFolderError, match="cannot be resumed as one run.*--overwrite"):
        claim_run_folder(tmp_path, resume=True, overwrite=False)
    with pytest.raises(RunFolderError, match="checkpoints of a run without a run.json"):
        claim_run_folder(tmp_path, resume=False, overwrite=False)


@contextlib.contextmanager
def read_only_folder(path: Path):
    """A folder this user cannot write: a read-only mount for root (who ignores permissions), else mode 0555."""
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o555)
        yield path
        path.chmod(0o755)
        return
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(path)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"root cannot make a read-only folder here (mount: {mounted.stderr.decode().strip()})")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def test_an_unwritable_output_folder_is_refused_before_anything_loads(tmp_path):
    with read_only_folder(tmp_path / "ro") as folder:
        with pytest.raises(RunFolderError, match="not writable.*choose another OUTPUT_DIR"):
            check_run_folder(folder / "run", resume=False, overwrite=False)
    (tmp_path / "file").write_text("")
    with pytest.raises(RunFolderError, match="is a file"):
        check_run_folder(tmp_path / "file" / "run", resume=False, overwrite=False)


def test_only_the_runs_own_intact_checkpoints_are_picked(tmp_path, mvgpt_trained_run):
    run = tmp_path / "run"
    run_id = claim_run_folder(run, resume=False, overwrite=False)
    for step in (2, 4):
        fake_checkpoint(run, f"checkpoint-{step}", run_id)
    fake_checkpoint(run, "checkpoint-6", "another-run")
    (run / STAGING_DIR / "checkpoint-8").mkdir(parents=True)
    assert latest_complete_checkpoint(run) == run / "checkpoint-4"

    # A truncated file in checkpoint-4: resume passes over it, saying which file and why.
    (run / "checkpoint-4" / "global_step1" / "optim_states.pt").write_bytes(b"wei")
    checkpoint, passed_over = resume_checkpoint(run)
    assert checkpoint == run / "checkpoint-2"
    assert len(passed_over) == 1 and "checkpoint-4/global_step1/optim_states.pt is damaged (3 bytes, 7" in passed_over[0]
    (run / "checkpoint-2" / "global_step1" / "optim_states.pt").write_bytes(b"WEIGHTS")
    assert "content changed" in checkpoint_problems(run / "checkpoint-2")[0]
    assert resume_checkpoint(run)[0] is None

    # Inference on the run folder: another run's checkpoint-final is never served.
    for step in (2, 4):
        shutil.rmtree(run / f"checkpoint-{step}")
    shutil.copytree(mvgpt_trained_run / FINAL_CHECKPOINT, run / FINAL_CHECKPOINT)
    marker = json.loads((run / FINAL_CHECKPOINT / COMPLETE_MARKER).read_text())
    assert marker["run_id"] is None  # written outside any run
    shutil.copytree(mvgpt_trained_run / FINAL_CHECKPOINT, run / "checkpoint-3")
    mark_complete(run / "checkpoint-3", 3, run_id)
    source = resolve_model_path(run)
    assert source.checkpoint == run / "checkpoint-3"
    assert "checkpoint-final belongs to another run" in source.note


def test_a_save_killed_between_its_two_renames_is_finished_or_undone(tmp_path, caplog):
    run = tmp_path / "run"
    run_id = claim_run_folder(run, resume=False, overwrite=False)
    staging = run / STAGING_DIR
    # Killed after the old checkpoint-final moved aside but before the new, complete one moved in.
    fake_checkpoint(staging, ".checkpoint-final.replaced", run_id, payload=b"old")
    fake_checkpoint(staging, FINAL_CHECKPOINT, run_id, payload=b"new")
    # Killed in the same place while replacing checkpoint-2, whose new save had not finished.
    fake_checkpoint(staging, ".checkpoint-2.replaced", run_id, payload=b"old")
    (staging / "checkpoint-2" / "global_step1").mkdir(parents=True)
    with caplog.at_level("WARNING"):
        claim_run_folder(run, resume=True, overwrite=False)
    assert (run / FINAL_CHECKPOINT / "global_step1" / "optim_states.pt").read_bytes() == b"new"
    assert (run / "checkpoint-2" / "global_step1" / "optim_states.pt").read_bytes() == b"old"
    assert checkpoint_problems(run / FINAL_CHECKPOINT) == [] == checkpoint_problems(run / "checkpoint-2")
    assert not staging.exists()
    assert "checkpoint-final: its save had completed" in caplog.text and "checkpoint-2: its replacement" in caplog.text
