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


def latest_complete_checkpoint(output_dir: str | Path) -> Path | None:
    """The complete `checkpoint-N` with the highest N, or None."""
    root = Path(output_dir)
    if not root.is_dir():
        return None
    steps = []
    for child in root.iterdir():
        match = _STEP_DIR.match(child.name)
        if match and child.is_dir() and is_complete(child):
            steps.append((int(match.group(1)), child))
    return max(steps)[1] if steps else None
