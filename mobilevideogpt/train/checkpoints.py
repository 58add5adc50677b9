"""Checkpoint folders written by training: completeness marker, discovery and the non-LoRA weights file.

A `checkpoint-N/` (or `checkpoint-final/`) counts as complete only once `COMPLETE` is written, last, after
every rank has finished saving; a crash mid-save therefore never leaves a folder that resume or inference
would mistake for a finished checkpoint.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

COMPLETE_MARKER = "COMPLETE"
NON_LORA_WEIGHTS = "non_lora_trainables.safetensors"
FINAL_CHECKPOINT = "checkpoint-final"
_STEP_DIR = re.compile(r"^checkpoint-(\d+)$")


def mark_complete(checkpoint_dir: str | Path, global_step: int) -> None:
    path = Path(checkpoint_dir) / COMPLETE_MARKER
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"global_step": global_step, "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S")}))
    tmp.replace(path)


def is_complete(checkpoint_dir: str | Path) -> bool:
    return (Path(checkpoint_dir) / COMPLETE_MARKER).is_file()


def step_checkpoints(output_dir: str | Path) -> list[Path]:
    """The `checkpoint-N` folders of a run, complete or not, by ascending N."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    steps = [(int(m.group(1)), child) for child in root.iterdir() if (m := _STEP_DIR.match(child.name)) and child.is_dir()]
    return [path for _, path in sorted(steps)]


def latest_complete_checkpoint(output_dir: str | Path) -> Path | None:
    """The complete `checkpoint-N` with the highest N, or None."""
    complete = [path for path in step_checkpoints(output_dir) if is_complete(path)]
    return complete[-1] if complete else None
