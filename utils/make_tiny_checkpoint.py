"""Write a tiny, randomly initialised Mobile-VideoGPT checkpoint with the real Qwen2.5 tokenizer.

Same module layout and token geometry as Amshaker/Mobile-VideoGPT-0.5B (224 px, 14×14 grids, 16 frames,
chunks of 8, k = 4 → 2402 visual tokens), tiny widths. Load it with

    import mobilevideogpt, transformers
    model = transformers.AutoModelForCausalLM.from_pretrained(DIR)
    tokenizer = transformers.AutoTokenizer.from_pretrained(DIR)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Use the package of this checkout even when it is not pip-installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mobilevideogpt.model.tiny import save_tiny_checkpoint  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--out", required=True, type=Path, help="output directory (created; existing files are overwritten)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed for the weights (default 0)")
    args = parser.parse_args(argv)
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {args.out} exists and is not a directory")
    out = save_tiny_checkpoint(args.out, seed=args.seed)
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    print(f"Wrote tiny Mobile-VideoGPT checkpoint to {out} ({size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
