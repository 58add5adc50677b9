"""Merge a training checkpoint (LoRA adapter + projectors) into a standalone model folder.

    python utils/merge_lora.py --model_path results/qved_finetune_mobilevideogpt_0.5B/checkpoint-final --out DIR

The output loads with `AutoModelForCausalLM.from_pretrained(DIR)` (after `import mobilevideogpt`) and no
PEFT: it holds every weight — the base model with the adapter merged into its linear layers, the trained
projectors, and the vision towers (so nothing is fetched when it loads) — as safetensors, plus the config,
the generation config, the checkpoint's tokenizer and `merge_info.json` (where it came from).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch

from .loading import one_line
from .finetuned import (
    ModelLoadError,
    assemble_model,
    load_model_config,
    load_tokenizer,
    resolve_dtype,
    resolve_model_path,
)

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="merge_lora.py",
        description="Merge a finetuning checkpoint (LoRA adapter + projector weights) into its base and save a "
        "standalone Mobile-VideoGPT folder that loads without PEFT.",
    )
    parser.add_argument(
        "--model_path", "--model-path", required=True, help="checkpoint-N/, checkpoint-final/ or the run folder"
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder (new or empty)")
    parser.add_argument("--model_base", "--model-base", help="base model (default: recorded in adapter_config.json)")
    parser.add_argument(
        "--dtype", default="auto", help="auto (the dtype the checkpoint records: the training dtype), fp32, bf16, fp16"
    )
    parser.add_argument("--clip_path", "--clip-path", help="CLIP weights when the base lacks them")
    parser.add_argument("--videomamba_path", "--videomamba-path", help="VideoMamba .pth when the base lacks it")
    parser.add_argument("--overwrite", action="store_true", help="replace the contents of --out")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        out = merge_checkpoint(
            args.model_path, args.out, args.model_base, args.dtype, args.clip_path, args.videomamba_path, args.overwrite
        )
    except (ModelLoadError, FileExistsError) as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 1
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    print(f"Wrote standalone model to {out} ({size / 2**20:.1f} MiB); load it with --model_path {out}")
    return 0
