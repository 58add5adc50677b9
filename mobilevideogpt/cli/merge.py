"""`mvgpt merge`: merge a finetuning checkpoint into a standalone model folder."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "merge a checkpoint's LoRA adapter + projectors into a standalone model folder"
DESCRIPTION = (
    "Merge a finetuning checkpoint (LoRA adapter + projector weights) into its base and save a standalone "
    "Mobile-VideoGPT folder that loads without PEFT."
)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model_path", required=True, help="checkpoint-N/, checkpoint-final/ or the run folder")
    parser.add_argument("--out", required=True, type=Path, help="output folder (new or empty)")
    parser.add_argument("--model_base", help="base model (default: recorded in adapter_config.json)")
    parser.add_argument(
        "--dtype", default="auto", help="auto (the dtype the checkpoint records: the training dtype), fp32, bf16, fp16"
    )
    parser.add_argument("--clip_path", help="CLIP weights when the base lacks them")
    parser.add_argument("--videomamba_path", help="VideoMamba .pth when the base lacks it")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier export in --out (never other files)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")


def run(args: argparse.Namespace) -> int:
    from ..export import merge_checkpoint
    from .common import quiet_libraries

    if not args.debug:
        quiet_libraries()
    out = merge_checkpoint(
        args.model_path, args.out, args.model_base, args.dtype, args.clip_path, args.videomamba_path, args.overwrite
    )
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    print(f"Wrote standalone model to {out} ({size / 2**20:.1f} MiB); load it with --model_path {out}")
    return 0
