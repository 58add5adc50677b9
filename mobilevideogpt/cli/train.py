"""`mvgpt train` (`bash scripts/finetune_qved.sh`): Stage-3 LoRA finetuning on QVED under DeepSpeed ZeRO-3.

Settings come from the recipe (`qved/recipe.py`: the guide's table), each overridable by an environment variable
or an option. The ranks are started through DeepSpeed's launcher and supervised (`train/launch.py`): the exit
status is the training's, and Ctrl-C stops every rank. The launch itself, shared with `mvgpt demo`, is
`cli/recipe_launch.py`.
"""

from __future__ import annotations

import argparse

from .recipe_launch import PARSER_KWARGS, add_recipe_options, launch_training, run_demo

HELP = "finetune on QVED with LoRA under DeepSpeed ZeRO-3 (the guide's `bash scripts/finetune_qved.sh`)"
DESCRIPTION = "Finetune Mobile-VideoGPT-0.5B on QVED with LoRA (LLM) + full projector training, DeepSpeed ZeRO-3."


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--demo",
        action="store_true",
        help="offline CPU run of the whole pipeline in a few minutes on a tiny model and a synthetic dataset "
        "(the same as `mvgpt demo`)",
    )
    add_recipe_options(parser)


def run(args: argparse.Namespace) -> int:
    return run_demo(args) if args.demo else launch_training(args, demo_mode=False)
