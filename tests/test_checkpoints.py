"""Run/checkpoint folders: the completeness rule, and what a model path resolves to (no weights loaded)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mobilevideogpt.checkpoints import (
    COMPLETE_MARKER,
    FINAL_CHECKPOINT,
    latest_complete_checkpoint,
    mark_complete,
    resolve_model_path,
)
from mobilevideogpt.errors import ModelLoadError


def copy_checkpoint(run: Path, tmp_path: Path) -> Path:
    target = tmp_path / "run" / FINAL_CHECKPOINT
    shutil.copytree(run / FINAL_CHECKPOINT, target)
    return target


def test_model_path_kinds(mvgpt_fast_checkpoint, mvgpt_trained_run, tmp_path):
    base = resolve_model_path(mvgpt_fast_checkpoint)
    assert base.checkpoint is None and base.base == str(mvgpt_fast_checkpoint)

    hub = resolve_model_path("Amshaker/Mobile-VideoGPT-0.5B")
    assert hub.checkpoint is None and hub.base == "Amshaker/Mobile-VideoGPT-0.5B"

    final = mvgpt_trained_run / FINAL_CHECKPOINT
    direct = resolve_model_path(final)
    assert direct.checkpoint == final and direct.base == str(mvgpt_fast_checkpoint)
    assert direct.has_adapter and direct.has_projectors and direct.note is None

    from_run = resolve_model_path(mvgpt_trained_run)
    assert from_run.checkpoint == final and FINAL_CHECKPOINT in from_run.note

    overridden = resolve_model_path(final, model_base="someone/other-base")
    assert overridden.base == "someone/other-base"


def test_run_folder_falls_back_to_latest_complete_checkpoint(mvgpt_trained_run, tmp_path):
    run = tmp_path / "run"
    for name in ("checkpoint-5", "checkpoint-10", "checkpoint-15", FINAL_CHECKPOINT):
        shutil.copytree(mvgpt_trained_run / FINAL_CHECKPOINT, run / name)
    (run / "checkpoint-15" / COMPLETE_MARKER).unlink()  # crashed while saving
    (run / FINAL_CHECKPOINT / COMPLETE_MARKER).unlink()
    source = resolve_model_path(run)
    assert source.checkpoint == run / "checkpoint-10"
    assert "checkpoint-final is incomplete" in source.note and "checkpoint-10" in source.note

    for name in ("checkpoint-5", "checkpoint-10"):
        (run / name / COMPLETE_MARKER).unlink()
    with pytest.raises(ModelLoadError, match="no complete checkpoint"):
        resolve_model_path(run)


def test_unusable_model_paths_say_what_to_do(mvgpt_trained_run, tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist.*finetune_qved.sh"):
        resolve_model_path("results/qved_finetune_mobilevideogpt_0.5B/checkpoint-final")
    checkpoint = copy_checkpoint(mvgpt_trained_run, tmp_path)
    (checkpoint / COMPLETE_MARKER).unlink()
    with pytest.raises(ModelLoadError, match="incomplete.*COMPLETE"):
        resolve_model_path(checkpoint)
    mark_complete(checkpoint, 1)
    config = json.loads((checkpoint / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "moved/away/base"
    (checkpoint / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="--model_base"):
        resolve_model_path(checkpoint)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match="not a Mobile-VideoGPT checkpoint"):
        resolve_model_path(empty)


def test_relative_recorded_base_is_found_above_the_checkpoint(mvgpt_fast_checkpoint, mvgpt_trained_run, tmp_path):
    """Training records the base path relative to the project root; inference may run from anywhere."""
    project = tmp_path / "project"
    (project / "results").mkdir(parents=True)
    (project / "results/tiny-base").symlink_to(mvgpt_fast_checkpoint)
    checkpoint = project / "results/run" / FINAL_CHECKPOINT
    shutil.copytree(mvgpt_trained_run / FINAL_CHECKPOINT, checkpoint)
    config = json.loads((checkpoint / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "results/tiny-base"
    (checkpoint / "adapter_config.json").write_text(json.dumps(config))
    assert resolve_model_path(checkpoint).base == str(project / "results/tiny-base")


def test_incomplete_checkpoints_are_never_latest(tmp_path):
    for step in (2, 10, 4):
        (tmp_path / f"checkpoint-{step}").mkdir()
    mark_complete(tmp_path / "checkpoint-2", 2)
    mark_complete(tmp_path / "checkpoint-4", 4)
    (tmp_path / "checkpoint-final").mkdir()
    mark_complete(tmp_path / "checkpoint-final", 12)
    assert latest_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-4"
    assert latest_complete_checkpoint(tmp_path / "missing") is None
