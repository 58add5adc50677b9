"""One run per output folder: checked before anything heavy loads, claimed by the rank that writes shared files.

A run folder's `run.json` records the run's id; every checkpoint's marker repeats it. Starting a run in a folder
that holds another one is refused unless the user says which they mean: `--resume` (continue that run),
another output folder, or `--overwrite` (remove what training wrote there — checkpoints, `run.json`,
`hyperparameters.json`, `loss_curve.png`, TensorBoard logs — and keep every other file).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from pathlib import Path

from ..checkpoints import (
    FINAL_CHECKPOINT,
    RUN_RECORD,
    STAGING_DIR,
    read_run_id,
    recover_staging,
    step_checkpoints,
    write_json_atomic,
)
from ..errors import ModelLoadError, RunFolderError

logger = logging.getLogger(__name__)

# What a training run writes at the top of its folder besides the checkpoint-N folders.
RUN_OUTPUTS = (RUN_RECORD, FINAL_CHECKPOINT, STAGING_DIR, "hyperparameters.json", "loss_curve.png", "runs")


def _previous_run(output_dir: Path) -> str | None:
    """A description of the run `output_dir` holds ("run 1a2b…: checkpoint-8, checkpoint-final"), or None."""
    try:
        run_id = read_run_id(output_dir)
    except ModelLoadError as err:
        raise RunFolderError(str(err)) from err
    names = [p.name for p in step_checkpoints(output_dir)]
    if (output_dir / FINAL_CHECKPOINT).is_dir():
        names.append(FINAL_CHECKPOINT)
    if run_id is None and not names:
        return None
    shown = ", ".join(names[-3:]) if names else "no checkpoint yet"
    return f"{'run ' + run_id if run_id else 'checkpoints of a run without a run.json'} ({shown})"


def _check_writable(output_dir: Path) -> None:
    """The folder, or the nearest folder above it that exists, must be a writable folder."""
    existing = output_dir
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise RunFolderError(f"OUTPUT_DIR {output_dir}: {existing} is a file, not a folder; choose another OUTPUT_DIR")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise RunFolderError(
            f"OUTPUT_DIR {output_dir} is not writable ({existing} does not allow this user to write); choose "
            "another OUTPUT_DIR or fix its permissions"
        )


def check_run_folder(output_dir: str | os.PathLike, *, resume: bool, overwrite: bool) -> None:
    """Raise `RunFolderError` (one line: what is wrong, what to do) unless this run may use `output_dir`."""
    folder = Path(output_dir)
    if resume and overwrite:
        raise RunFolderError("--resume continues the run in OUTPUT_DIR and --overwrite replaces it: pass only one")
    _check_writable(folder)
    if not folder.is_dir():
        return
    previous = _previous_run(folder)
    if resume:
        if previous is not None and read_run_id(folder) is None:
            raise RunFolderError(
                f"OUTPUT_DIR {folder} holds {previous}: it cannot be resumed as one run; pass --overwrite to start "
                "over in it, or choose a new OUTPUT_DIR"
            )
        return
    if previous is not None and not overwrite:
        raise RunFolderError(
            f"OUTPUT_DIR {folder} already holds {previous}; pass --resume to continue it, choose a new OUTPUT_DIR, "
            "or pass --overwrite to replace it"
        )


def remove_run_outputs(output_dir: Path) -> None:
    """Delete what a training run wrote at the top of `output_dir`; other files stay."""
    for path in [*step_checkpoints(output_dir), *(output_dir / name for name in RUN_OUTPUTS)]:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def claim_run_folder(output_dir: str | os.PathLike, *, resume: bool, overwrite: bool) -> str:
    """Check (`check_run_folder`), prepare and claim `output_dir`; returns the run id. Only one process may call it.

    A resumed run keeps its id; otherwise (a new or empty folder, or `overwrite`) a new id is recorded. What an
    earlier process left under `.saving/` is finished or removed (`checkpoints.recover_staging`).
    """
    folder = Path(output_dir)
    check_run_folder(folder, resume=resume, overwrite=overwrite)
    folder.mkdir(parents=True, exist_ok=True)
    if overwrite:
        remove_run_outputs(folder)
    for line in recover_staging(folder):
        logger.warning("%s: %s", folder, line)
    run_id = read_run_id(folder) if resume else None
    if run_id is None:
        run_id = uuid.uuid4().hex
        write_json_atomic(folder / RUN_RECORD, {"run_id": run_id, "started_at": time.strftime("%Y-%m-%dT%H:%M:%S")})
    return run_id
