"""`mvgpt tiny-checkpoint`: a tiny, randomly initialised Mobile-VideoGPT checkpoint.

Same module layout and token geometry as Amshaker/Mobile-VideoGPT-0.5B (224 px, 14×14 grids, 16 frames,
chunks of 8, k = 4 → 2402 visual tokens), tiny widths, the real Qwen2.5 tokenizer. It loads like the
published model: `AutoModelForCausalLM.from_pretrained(DIR)` after `import mobilevideogpt`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "write a tiny, randomly initialised checkpoint with the published layout and the real tokenizer"
DESCRIPTION = __doc__
PARSER_KWARGS = {"formatter_class": argparse.RawDescriptionHelpFormatter}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, help="output directory (created; existing files are overwritten)")
    parser.add_argument("--seed", type=int, default=0, help="random seed for the weights (default 0)")


def run(args: argparse.Namespace) -> int:
    from ..model.tiny import save_tiny_checkpoint

    if args.out.exists() and not args.out.is_dir():
        raise ValueError(f"--out {args.out} exists and is not a directory")
    out = save_tiny_checkpoint(args.out, seed=args.seed)
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    print(f"Wrote tiny Mobile-VideoGPT checkpoint to {out} ({size / 2**20:.1f} MiB)")
    return 0
