"""`mvgpt demo` (`bash scripts/finetune_qved.sh --demo`): the whole pipeline offline, on CPU, proving it learns.

Under DEMO_DIR (default results/demo): a tiny Mobile-VideoGPT with the published visual geometry and a small LLM
warmed up on the sample answers' language, a synthetic QVED-layout dataset whose prompts name no exercise, and
held-out videos of another seed. It finetunes under DeepSpeed ZeRO-3 with the recipe's demo values (`mvgpt train
--help` lists them), then asks base and finetuned model about the held-out videos with the generic prompt and
prints a before/after table: naming the right exercise there takes every stage, from video decoding through both
towers, frame selection, the projectors and the LoRA'd LLM to generation.
"""

from __future__ import annotations

import argparse

from .recipe_launch import PARSER_KWARGS, add_recipe_options, run_demo  # the run is shared with `mvgpt train --demo`

HELP = "run the whole pipeline offline on a tiny model and synthetic videos, and show that it learned (minutes, CPU)"
DESCRIPTION = __doc__


def configure(parser: argparse.ArgumentParser) -> None:
    add_recipe_options(parser)


def run(args: argparse.Namespace) -> int:
    return run_demo(args)
