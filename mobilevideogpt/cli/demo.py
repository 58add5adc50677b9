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
import os
from pathlib import Path

from . import train

HELP = "run the whole pipeline offline on a tiny model and synthetic videos, and show that it learned (minutes, CPU)"
DESCRIPTION = __doc__
PARSER_KWARGS = {"formatter_class": argparse.RawDescriptionHelpFormatter, "epilog": train.PARSER_KWARGS["epilog"]}
LABELS = ("base", "finetuned")


def configure(parser: argparse.ArgumentParser) -> None:
    train.add_recipe_options(parser)


def before_after(report: dict) -> list[str]:
    """The demo's closing table: base vs finetuned on the held-out videos."""
    from ..evaluation.report import format_accuracy, format_number

    models = {m["label"]: m["metrics"] for m in report["models"]}
    rows = [
        ("exercise named right", lambda m: format_accuracy(m["exercise_accuracy_base"], digits=0)),
        ("  ... and its side (left/right arm)", lambda m: format_accuracy(m["exercise_accuracy_exact"], digits=0)),
        ("ROUGE-L", lambda m: format_number(m["rouge_l"]["mean"], 3)),
        ("METEOR", lambda m: format_number(m["meteor"]["mean"], 3)),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [f"  {'':<{width}}  {LABELS[0]:>16}  {LABELS[1]:>16}"]
    lines += [f"  {name:<{width}}  {cell(models[LABELS[0]]):>16}  {cell(models[LABELS[1]]):>16}" for name, cell in rows]
    return lines


def example_answer(report: dict) -> list[str]:
    """One held-out video where the finetuned model named the exercise, with both answers and the reference."""
    base = {row["id"]: row for row in next(m for m in report["models"] if m["label"] == LABELS[0])["per_sample"]}
    tuned = next(m for m in report["models"] if m["label"] == LABELS[1])["per_sample"]
    chosen = next((row for row in tuned if row["exercise_base"]), tuned[0] if tuned else None)
    if chosen is None:
        return []
    return [
        f"  video      {chosen['video']}",
        f"  reference  {chosen['reference']}",
        f"  finetuned  {chosen['prediction']}",
        f"  base       {base.get(chosen['id'], {}).get('prediction', '(no answer)')}",
    ]


def run(args: argparse.Namespace) -> int:
    from ..qved.demo import EVAL_MAX_NEW_TOKENS, prepare_demo
    from ..qved.recipe import DEMO_EVAL, resolve_settings

    values = resolve_settings(vars(args), os.environ, demo=True)
    demo_dir = Path(values["DEMO_DIR"])
    own_run = args.output_dir is None and "OUTPUT_DIR" not in os.environ
    if own_run and not args.resume and not args.overwrite:
        # The demo's own run folder: a new demo replaces the previous one (another OUTPUT_DIR is never replaced).
        args.overwrite = True
    if not args.dry_run:
        _, _, heldout = prepare_demo(demo_dir, log=print)
    status = train.launch_training(args, demo_mode=True)
    if status != 0 or args.dry_run:
        return status

    from ..evaluation.runner import EvaluationSettings, evaluate
    from .common import quiet_libraries

    quiet_libraries()
    print("\n== Held-out videos (another seed, never trained on), asked without naming the exercise ==", flush=True)
    output_dir, report = evaluate(
        EvaluationSettings(
            models=[values["MODEL"], values["OUTPUT_DIR"]],
            labels=list(LABELS),
            split=str(heldout / "qved_train.json"),
            output_dir=demo_dir / DEMO_EVAL,
            max_new_tokens=EVAL_MAX_NEW_TOKENS,
            overwrite=True,
            bertscore=False,
            similarity=False,
        ),
        log=print,
    )
    print("\n".join(["", "Before / after finetuning, on the held-out videos:", *before_after(report)]))
    print("\n".join(["", "One answer:", *example_answer(report)]))
    print(
        f"\nReport: {output_dir / 'report.html'} (confusion matrix, every answer); "
        f"finetuned checkpoint: {Path(values['OUTPUT_DIR']) / 'checkpoint-final'}"
    )
    return 0
