"""Launching the finetuning recipe, shared by `mvgpt train` and `mvgpt demo` (= `mvgpt train --demo`).

Its options (one per recipe setting, `qved/recipe.py`), the flags each rank's TrainingArguments get, the launch
through DeepSpeed's launcher under supervision (`train/launch.py`), and the demo's run around that launch: prepare
its tiny model and synthetic videos, finetune, then ask base and finetuned model about the held-out videos.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

from ..qved.recipe import AUTO, DEMO_DIR_SETTING, FIXED_TRAINER_ARGS, SETTINGS, resolve_settings

DEMO_LABELS = ("base", "finetuned")


def _settings_table() -> str:
    width = max(len(s.name) for s in SETTINGS)
    rows = [f"  {s.name:<{width}} {s.help} ({s.default or 'none'}{f'; demo: {s.demo}' if s.demo else ''})" for s in SETTINGS]
    rows.append(f"  {DEMO_DIR_SETTING.name:<{width}} {DEMO_DIR_SETTING.help} ({DEMO_DIR_SETTING.default})")
    rows.append(f"  {'PYTHON':<{width}} python interpreter of bash scripts/finetune_qved.sh (python)")
    return "\n".join(rows)


# The help of both commands: every setting with its default (and the demo's value).
PARSER_KWARGS = {
    "formatter_class": argparse.RawDescriptionHelpFormatter,
    "epilog": "Settings: environment variable or --option (default), e.g. BATCH=2 GACC=8 or --batch 2 --gacc 8:\n"
    + _settings_table()
    + "\n\nArguments after `--` go to the trainer as they are (any transformers TrainingArguments flag, "
    "e.g. -- --max_steps 20).",
}


def add_recipe_options(parser: argparse.ArgumentParser) -> None:
    """--resume, --dry-run, one option per recipe setting, and the trainer's own flags after `--`."""
    parser.add_argument("--resume", action="store_true", help="continue from the latest complete checkpoint-N in OUTPUT_DIR")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run OUTPUT_DIR holds (its checkpoints, logs and run.json; other files stay)",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the configuration and the launch command, then exit")
    parser.add_argument(
        "-v", "--verbose", action="store_true",
        help="also show the launcher's, DeepSpeed's and the libraries' routine messages (hidden by default)",
    )
    parser.add_argument(
        "--rank-args",
        action="store_true",
        help="print only the flags each rank gets, for torchrun or SLURM (`-m mobilevideogpt.cli.train_rank FLAGS`)",
    )
    for setting in (*SETTINGS, DEMO_DIR_SETTING):
        parser.add_argument(setting.option, dest=setting.dest, metavar=setting.name, help=argparse.SUPPRESS)
    parser.add_argument("trainer_args", nargs="*", metavar="-- TRAINER_ARGS", help="passed to the trainer as they are")


def _gpu_defaults() -> tuple[int, str]:
    """(visible GPUs, the precision they support best; fp32 without GPU)."""
    import torch

    count = torch.cuda.device_count()
    if not count:
        return 0, "fp32"
    return count, "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def trainer_arguments(
    values: dict[str, str], resume: bool, on_gpu: bool, precision: str, overwrite: bool = False
) -> list[str]:
    """The flags each rank's TrainingArguments receive for the resolved recipe values."""
    if precision not in ("bf16", "fp16", "fp32"):
        raise ValueError(f"PRECISION must be bf16, fp16 or fp32 (got {precision!r})")
    args = [
        "--deepspeed", values["DS_CONFIG"],
        "--model_name_or_path", values["MODEL"],
        "--dataset_use", values["DATASET"],
        "--output_dir", values["OUTPUT_DIR"],
        "--num_train_epochs", values["EPOCHS"],
        "--learning_rate", values["LR"],
        "--mm_projector_lr", values["MM_PROJ_LR"],
        "--lora_r", values["LORA_R"],
        "--lora_alpha", values["LORA_ALPHA"],
        "--per_device_train_batch_size", values["BATCH"],
        "--gradient_accumulation_steps", values["GACC"],
        "--model_max_length", values["MAXLEN"],
        "--visual_tokens", values["VISUAL_TOKENS"],
        "--save_steps", values["SAVE_STEPS"],
        "--warmup_steps", values["WARMUP"],
        "--activation_checkpointing", values["GRAD_CKPT"],
        "--report_to", values["REPORT_TO"],
        *FIXED_TRAINER_ARGS,
    ]
    if values["DATASET_VAL"]:
        # Evaluation computes full logits (length × vocab per sample): one sample per step keeps that small.
        args += ["--dataset_val", values["DATASET_VAL"], "--eval_strategy", "steps", "--eval_steps", values["SAVE_STEPS"],
                 "--per_device_eval_batch_size", "1", "--prediction_loss_only", "True"]
    else:
        args += ["--eval_strategy", "no"]
    if resume:
        args += ["--resume", "True"]
    if overwrite:
        args += ["--overwrite", "True"]
    if not on_gpu:
        args += ["--use_cpu", "True"]
    if precision != "fp32":
        args += [f"--{precision}", "True"]
    return args


def launch_training(args: argparse.Namespace, demo_mode: bool) -> int:
    """Resolve the recipe, print it, and run (or, with --dry-run, show) the launch."""
    from ..checkpoints import COMPLETE_MARKER, FINAL_CHECKPOINT, read_marker, read_run_id
    from ..model.token_budget import parse_visual_tokens
    from ..train.launch import launcher_command, rank_environment, supervise
    from ..train.run_folder import check_run_folder
    from .train_memory import memory_report

    values = resolve_settings(vars(args), os.environ, demo=demo_mode)
    parse_visual_tokens(values["VISUAL_TOKENS"])  # a typo fails here, before anything starts
    if values["DATASET_VAL"] == AUTO:
        values["DATASET_VAL"] = "QVED_VAL" if Path("dataset/qved_val.json").is_file() else ""
    gpus, default_precision = _gpu_defaults()
    num_gpus = int(values["NUM_GPUS"]) if values["NUM_GPUS"] != AUTO else max(gpus, 1)
    precision = values["PRECISION"] if values["PRECISION"] != AUTO else default_precision
    trainer_args = trainer_arguments(values, args.resume, gpus > 0, precision, args.overwrite) + list(args.trainer_args)
    command = launcher_command(
        trainer_args, num_gpus=num_gpus, hostfile=values["HOSTFILE"] or None, master_port=int(values["MASTER_PORT"]),
        verbose=args.verbose,
    )
    if args.rank_args:
        print(shlex.join(trainer_args))
        return 0
    where = f"nodes from {values['HOSTFILE']}" if values["HOSTFILE"] else f"{num_gpus} rank(s) on {'GPU' if gpus else 'CPU'}"
    print(
        f"""== QVED finetuning: Mobile-VideoGPT ==
  base model        {values['MODEL']}
  train / val data  {values['DATASET']} / {values['DATASET_VAL'] or 'none'}
  epochs            {values['EPOCHS']}
  learning rate     {values['LR']} (projectors {values['MM_PROJ_LR']})
  LoRA r / alpha    {values['LORA_R']} / {values['LORA_ALPHA']}
  batch x accum     {values['BATCH']} x {values['GACC']} per rank
  max text length   {values['MAXLEN']}
  visual tokens     {values['VISUAL_TOKENS']} (per video)
  save every        {values['SAVE_STEPS']} steps -> {values['OUTPUT_DIR']}
  DeepSpeed         {values['DS_CONFIG']}, {where}, {precision}""",
        flush=True,
    )
    print("\n".join(memory_report(values, gpus, precision, num_gpus)), flush=True)
    if args.dry_run:
        print(shlex.join(command))
        return 0
    if not Path(values["DS_CONFIG"]).is_file():
        raise FileNotFoundError(f"DeepSpeed config {values['DS_CONFIG']} not found; run from the project root or set DS_CONFIG")
    # The ranks claim the folder; checking here first fails before DeepSpeed starts and any model loads.
    check_run_folder(values["OUTPUT_DIR"], resume=args.resume, overwrite=args.overwrite)
    started = time.time()
    status = supervise(command, rank_environment(dict(os.environ), on_gpu=gpus > 0, ranks_per_node=num_gpus, verbose=args.verbose))
    if status != 0:
        print(f"error: training failed (exit status {status}); see the log above", file=sys.stderr)
        return status
    final = Path(values["OUTPUT_DIR"]) / FINAL_CHECKPOINT
    marker = read_marker(final)
    if marker is None or marker.get("run_id") != read_run_id(values["OUTPUT_DIR"]) or (final / COMPLETE_MARKER).stat().st_mtime < started:
        print(f"error: the launcher reported success but no rank wrote {final / COMPLETE_MARKER}: a rank was killed?", file=sys.stderr)
        return 1
    return 0


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
    lines = [f"  {'':<{width}}  {DEMO_LABELS[0]:>16}  {DEMO_LABELS[1]:>16}"]
    lines += [f"  {name:<{width}}  {cell(models[DEMO_LABELS[0]]):>16}  {cell(models[DEMO_LABELS[1]]):>16}" for name, cell in rows]
    return lines


def example_answer(report: dict) -> list[str]:
    """One held-out video where the finetuned model named the exercise, with both answers and the reference."""
    base = {row["id"]: row for row in next(m for m in report["models"] if m["label"] == DEMO_LABELS[0])["per_sample"]}
    tuned = next(m for m in report["models"] if m["label"] == DEMO_LABELS[1])["per_sample"]
    chosen = next((row for row in tuned if row["exercise_base"]), tuned[0] if tuned else None)
    if chosen is None:
        return []
    return [
        f"  video      {chosen['video']}",
        f"  reference  {chosen['reference']}",
        f"  finetuned  {chosen['prediction']}",
        f"  base       {base.get(chosen['id'], {}).get('prediction', '(no answer)')}",
    ]


def run_demo(args: argparse.Namespace) -> int:
    """Prepare the demo's inputs, finetune with the demo's values, and show base vs finetuned on held-out videos."""
    from ..qved.demo import EVAL_MAX_NEW_TOKENS, prepare_demo
    from ..qved.recipe import DEMO_EVAL

    values = resolve_settings(vars(args), os.environ, demo=True)
    demo_dir = Path(values["DEMO_DIR"])
    own_run = args.output_dir is None and "OUTPUT_DIR" not in os.environ
    if own_run and not args.resume and not args.overwrite:
        # The demo's own run folder: a new demo replaces the previous one (another OUTPUT_DIR is never replaced).
        args.overwrite = True
    if not args.dry_run:
        _, _, heldout = prepare_demo(demo_dir, log=print)
    status = launch_training(args, demo_mode=True)
    if status != 0 or args.dry_run:
        return status

    from ..evaluation.runner import EvaluationSettings, evaluate
    from .common import quiet_libraries

    quiet_libraries()
    print("\n== Held-out videos (another seed, never trained on), asked without naming the exercise ==", flush=True)
    output_dir, report = evaluate(
        EvaluationSettings(
            models=[values["MODEL"], values["OUTPUT_DIR"]],
            labels=list(DEMO_LABELS),
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
