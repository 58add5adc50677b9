"""`mvgpt demo` (`bash scripts/finetune_qved.sh --demo`): the whole pipeline offline, on CPU, in a few minutes.

Builds a tiny, randomly initialised Mobile-VideoGPT with the real architecture and tokenizer and a synthetic
dataset in the QVED layout under DEMO_DIR (default results/demo), converts it, and finetunes it under DeepSpeed
ZeRO-3 with the recipe's demo values (`mvgpt train --help` lists them).
"""

from __future__ import annotations

import argparse
import os

from . import train

HELP = "run the whole pipeline offline on a tiny model and a synthetic dataset (few minutes on CPU)"
DESCRIPTION = __doc__
PARSER_KWARGS = {"formatter_class": argparse.RawDescriptionHelpFormatter, "epilog": train.PARSER_KWARGS["epilog"]}


def configure(parser: argparse.ArgumentParser) -> None:
    train.add_recipe_options(parser)


def run(args: argparse.Namespace) -> int:
    from ..qved.demo import prepare_demo
    from ..qved.recipe import resolve_settings

    demo_dir = resolve_settings(vars(args), os.environ, demo=True)["DEMO_DIR"]
    own_run = args.output_dir is None and "OUTPUT_DIR" not in os.environ
    if own_run and not args.resume and not args.overwrite:
        # The demo's own run folder: a new demo replaces the previous one (another OUTPUT_DIR is never replaced).
        args.overwrite = True
    if not args.dry_run:
        prepare_demo(demo_dir, log=print)
    return train.launch_training(args, demo_mode=True)
