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
import time
from pathlib import Path

import torch

from .checkpoints import resolve_model_path
from .errors import ModelLoadError
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

    dtype "auto" keeps the dtype the checkpoint's config records (training writes its training dtype). Raises `ModelLoadError` for unusable
    checkpoints and `FileExistsError` when `out_dir` holds files (unless `overwrite`).
    """
    source = resolve_model_path(model_path, model_base)
    if not source.is_training_checkpoint or not (source.has_adapter or source.has_projectors):
        raise ModelLoadError(
            f"{model_path} is already a standalone model (no LoRA adapter or projector file to merge); load it directly"
        )
    out = Path(out_dir)
    if out.resolve() in (source.checkpoint.resolve(), Path(source.base).resolve()):
        raise ModelLoadError(f"--out {out} is the checkpoint or its base; choose a new folder")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"--out {out} is not empty; choose a new folder or pass --overwrite")

    target_dtype = saved_dtype(load_model_config(source)) if dtype in (None, "", "auto") else resolve_dtype(dtype)
    model = assemble_model(source, clip_path, videomamba_path, merge=True)
    model.to(target_dtype)
    model.config.dtype = target_dtype
    tokenizer = load_tokenizer(source)

    # Only now that the new model exists may an old export be replaced.
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    info = {
        "merged_from": str(source.checkpoint),
        "base": source.base,
        "lora_merged": source.has_adapter,
        "projectors_applied": source.has_projectors,
        "dtype": str(target_dtype).removeprefix("torch."),
        "merged_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    (out / MERGE_INFO).write_text(json.dumps(info, indent=2))
    return out
