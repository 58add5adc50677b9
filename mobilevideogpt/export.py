"""Merge a training checkpoint (LoRA adapter + projectors) into a standalone model folder.

    mvgpt merge --model_path results/qved_finetune_mobilevideogpt_0.5B/checkpoint-final --out DIR

The output loads with `AutoModelForCausalLM.from_pretrained(DIR)` (after `import mobilevideogpt`) and no
PEFT: it holds every weight — the base model with the adapter merged into its linear layers, the trained
projectors, and the vision towers (so nothing is fetched when it loads) — as safetensors, plus the config,
the generation config, the checkpoint's tokenizer and `merge_info.json` (where it came from).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from .checkpoints import FINAL_CHECKPOINT, RUN_RECORD, resolve_model_path, step_checkpoints, swap_into_place
from .errors import ModelLoadError, is_write_failure, saving_error
from .model.assemble import assemble_model, load_model_config, load_tokenizer
from .runtime import resolve_dtype

MERGE_INFO = "merge_info.json"


def saved_dtype(config) -> torch.dtype:
    """The dtype `config` records (the training dtype for a training checkpoint; fp32 when it does not say)."""
    value = getattr(config, "dtype", None)
    if isinstance(value, torch.dtype):
        return value
    if isinstance(value, str) and isinstance(getattr(torch, value, None), torch.dtype):
        return getattr(torch, value)
    return torch.float32


def _is_within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def protected_folders(source) -> list[tuple[str, Path]]:
    """(what, folder) an export must stay out of: the checkpoint's training run, the checkpoint, a local base."""
    checkpoint = source.checkpoint.resolve()
    folders = [("the checkpoint", checkpoint)]
    run = checkpoint.parent
    if (run / RUN_RECORD).is_file() or step_checkpoints(run) or (run / FINAL_CHECKPOINT).is_dir():
        folders.insert(0, ("the checkpoint's training run", run))
    base = Path(source.base).expanduser()
    if base.exists():
        folders.append(("the base model", base.resolve()))
    return folders


def check_output_folder(out: Path, source, overwrite: bool) -> None:
    """Refuse an output that is, contains or lies inside a protected folder, and one holding files that are not an
    earlier export (`--overwrite` replaces only an export: a folder with `merge_info.json`)."""
    resolved = out.expanduser().resolve()
    overlaps = [(w, f) for w, f in protected_folders(source) if _is_within(resolved, f) or _is_within(f, resolved)]
    if overlaps:
        what, folder = next(((w, f) for w, f in overlaps if f == resolved), overlaps[0])
        relation = "is" if resolved == folder else "lies inside" if _is_within(resolved, folder) else "contains"
        raise ModelLoadError(f"--out {out} {relation} {what} ({folder}); choose a folder outside it")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file; choose a folder")
    if out.is_dir() and any(out.iterdir()):
        if not (out / MERGE_INFO).is_file():
            raise FileExistsError(
                f"--out {out} holds files that are not a merged model (no {MERGE_INFO}); choose a new or empty folder"
            )
        if not overwrite:
            raise FileExistsError(f"--out {out} is not empty (an earlier export); choose a new folder or pass --overwrite")


def merge_checkpoint(
    model_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    model_base: str | os.PathLike | None = None,
    dtype: str | torch.dtype = "auto",
    clip_path: str | None = None,
    videomamba_path: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the standalone model for `model_path` (a training checkpoint or run folder) to `out_dir`.

    dtype "auto" keeps the dtype the checkpoint's config records (training writes its training dtype). The export is
    written beside `out_dir` under a temporary name and renamed into place when complete, so an earlier export is
    replaced only by a whole new one. Raises `ModelLoadError` for unusable checkpoints or an `out_dir` inside the
    checkpoint, its run or its base, `FileExistsError` when `out_dir` holds files (an earlier export may be replaced
    with `overwrite`), and `SaveError` naming the folder when writing fails (a full disk says so).
    """
    source = resolve_model_path(model_path, model_base)
    if not source.is_training_checkpoint or not (source.has_adapter or source.has_projectors):
        raise ModelLoadError(
            f"{model_path} is already a standalone model (no LoRA adapter or projector file to merge); load it directly"
        )
    out = Path(out_dir)
    check_output_folder(out, source, overwrite)

    config = load_model_config(source)
    target_dtype = saved_dtype(config) if dtype in (None, "", "auto") else resolve_dtype(dtype)
    model = assemble_model(source, clip_path, videomamba_path, merge=True, config=config)
    model.to(target_dtype)
    model.config.dtype = target_dtype
    tokenizer = load_tokenizer(source)

    out.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=f".{out.name}.merging-", dir=out.parent))
    try:
        model.save_pretrained(staged, safe_serialization=True)
        tokenizer.save_pretrained(staged)
        info = {
            "merged_from": str(source.checkpoint),
            "base": source.base,
            "lora_merged": source.has_adapter,
            "projectors_applied": source.has_projectors,
            "dtype": str(target_dtype).removeprefix("torch."),
            "merged_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        (staged / MERGE_INFO).write_text(json.dumps(info, indent=2))
        umask = os.umask(0)
        os.umask(umask)
        staged.chmod(0o777 & ~umask)  # mkdtemp made it private; an export is an ordinary folder
        if out.exists() and not any(out.iterdir()):
            out.rmdir()
        swap_into_place(staged, out)
    except Exception as err:
        shutil.rmtree(staged, ignore_errors=True)
        if is_write_failure(err):
            raise saving_error(err, "the merged model", out) from err
        raise
    return out
