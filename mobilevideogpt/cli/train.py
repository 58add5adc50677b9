"""`mvgpt train` (`bash scripts/finetune_qved.sh`): Stage-3 LoRA finetuning on QVED under DeepSpeed ZeRO-3.

Settings come from the recipe (`qved/recipe.py`: the guide's table), each overridable by an environment variable
or an option. The ranks are started through DeepSpeed's launcher and supervised (`train/launch.py`): the exit
status is the training's, and Ctrl-C stops every rank.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

from ..qved.recipe import AUTO, DEMO_DIR_SETTING, FIXED_TRAINER_ARGS, SETTINGS, resolve_settings

HELP = "finetune on QVED with LoRA under DeepSpeed ZeRO-3 (the guide's `bash scripts/finetune_qved.sh`)"
DESCRIPTION = "Finetune Mobile-VideoGPT-0.5B on QVED with LoRA (LLM) + full projector training, DeepSpeed ZeRO-3."


def _settings_table() -> str:
    width = max(len(s.name) for s in SETTINGS)
    rows = [f"  {s.name:<{width}} {s.help} ({s.default or 'none'}{f'; demo: {s.demo}' if s.demo else ''})" for s in SETTINGS]
    rows.append(f"  {DEMO_DIR_SETTING.name:<{width}} {DEMO_DIR_SETTING.help} ({DEMO_DIR_SETTING.default})")
    rows.append(f"  {'PYTHON':<{width}} python interpreter of bash scripts/finetune_qved.sh (python)")
    return "\n".join(rows)


PARSER_KWARGS = {
    "formatter_class": argparse.RawDescriptionHelpFormatter,
    "epilog": "Settings: environment variable or --option (default), e.g. BATCH=2 GACC=8 or --batch 2 --gacc 8:\n"
    + _settings_table()
    + "\n\nArguments after `--` go to the trainer as they are (any transformers TrainingArguments flag, "
    "e.g. -- --max_steps 20).",
}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--demo",
        action="store_true",
        help="offline CPU run of the whole pipeline in a few minutes on a tiny model and a synthetic dataset "
        "(the same as `mvgpt demo`)",
    )
    add_recipe_options(parser)


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


def run(args: argparse.Namespace) -> int:
    if args.demo:
        from . import demo

        return demo.run(args)
    return launch_training(args, demo_mode=False)


def launch_training(args: argparse.Namespace, demo_mode: bool) -> int:
    """Resolve the recipe, print it, and run (or, with --dry-run, show) the launch."""
    from ..checkpoints import COMPLETE_MARKER, FINAL_CHECKPOINT, read_marker, read_run_id
    from ..train.launch import launcher_command, rank_environment, supervise
    from ..train.run_folder import check_run_folder
    from .train_memory import memory_report

    from ..model.token_budget import parse_visual_tokens

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
