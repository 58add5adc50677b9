"""The QVED finetuning recipe: the guide's table and the offline demo's values, written once.

Each setting is an environment variable of `bash scripts/finetune_qved.sh` (as the guide documents, e.g.
`BATCH=2 GACC=8 bash scripts/finetune_qved.sh`) and an option of `mvgpt train` (`--batch 2`). Precedence: option,
then environment variable, then the demo's value (with `--demo`), then the guide's.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

BASE_MODEL = "Amshaker/Mobile-VideoGPT-0.5B"
DEFAULT_OUTPUT_DIR = "results/qved_finetune_mobilevideogpt_0.5B"
DEFAULT_DEMO_DIR = "results/demo"
# Where the demo keeps its tiny base model, dataset and run, under DEMO_DIR.
DEMO_MODEL = "tiny-mobilevideogpt"
DEMO_DATASET = "dataset"
DEMO_RUN = "qved_finetune_tiny"
DEMO_HELDOUT = "heldout"
DEMO_EVAL = "eval_heldout"
AUTO = "auto"


@dataclass(frozen=True)
class Setting:
    name: str  # the environment variable; `--name-in-lower-case` is the option
    default: str  # the guide's value; "" = unset, AUTO = decided at launch (see `help`)
    help: str
    demo: str | None = None  # the demo's value; "{demo_dir}" stands for DEMO_DIR

    @property
    def option(self) -> str:
        return "--" + self.name.lower().replace("_", "-")

    @property
    def dest(self) -> str:
        return self.name.lower()


SETTINGS = (
    Setting("MODEL", BASE_MODEL, "base checkpoint, hub id or directory", f"{{demo_dir}}/{DEMO_MODEL}"),
    Setting("DATASET", "QVED_TRAIN", "training set: registry name(s) or .json path(s)", f"{{demo_dir}}/{DEMO_DATASET}/qved_train.json"),
    Setting(
        "DATASET_VAL",
        AUTO,
        "evaluation set; empty for none (auto: QVED_VAL when dataset/qved_val.json exists)",
        "",
    ),
    # The demo's values let the tiny model learn within its budget (qved/demo.py): 45 steps of 8 samples, a
    # projector rate that lets them learn to write what the warmed-up LLM reads, a long warm-up against early
    # collapse onto one class, no gradient checkpointing (nothing to save in memory at this size).
    Setting("EPOCHS", "10", "number of epochs", "3"),
    Setting("LR", "1e-4", "learning rate (LoRA)", "1e-3"),
    Setting("MM_PROJ_LR", "2e-5", "projector learning rate", "1e-2"),
    Setting("LORA_R", "64", "LoRA rank", "8"),
    Setting("LORA_ALPHA", "128", "LoRA alpha", "16"),
    Setting("BATCH", "4", "per-device batch size", "4"),
    Setting("GACC", "4", "gradient accumulation steps", "2"),
    Setting("MAXLEN", "2048", "max text tokens per sample (each video's visual tokens come on top)", "256"),
    Setting(
        "VISUAL_TOKENS", "all",
        "visual tokens per video: all, a count or a fraction (e.g. 0.25); recorded in the checkpoints",
    ),  # fmt: skip
    Setting("SAVE_STEPS", "50", "checkpoint every N optimizer steps", "25"),
    Setting("WARMUP", "0.03", "learning-rate warm-up: steps, or a share of all steps below 1", "0.25"),
    Setting("GRAD_CKPT", "True", "gradient checkpointing True | False", "False"),
    Setting("OUTPUT_DIR", DEFAULT_OUTPUT_DIR, "where checkpoints go", f"{{demo_dir}}/{DEMO_RUN}"),
    Setting("DS_CONFIG", "scripts/zero3.json", "DeepSpeed config"),
    Setting("NUM_GPUS", AUTO, "ranks on this node (auto: all visible GPUs; 1 process on CPU)"),
    Setting("HOSTFILE", "", "DeepSpeed hostfile for several nodes"),
    Setting("MASTER_PORT", "29500", "rendezvous port"),
    Setting("PRECISION", AUTO, "bf16 | fp16 | fp32 (auto: bf16 on GPUs that support it, fp16 on others, fp32 on CPU)"),
    Setting("REPORT_TO", "tensorboard", "tensorboard | wandb | none"),
)
DEMO_DIR_SETTING = Setting("DEMO_DIR", DEFAULT_DEMO_DIR, "where --demo keeps its tiny model, dataset and run")

# Trainer flags the recipe always passes (not settings of the guide's table).
FIXED_TRAINER_ARGS = (
    "--lora_enable", "True",
    "--lora_dropout", "0.05",
    "--logging_steps", "1",
    "--weight_decay", "0.0",
    "--lr_scheduler_type", "cosine",
    "--dataloader_num_workers", "2",
    "--save_strategy", "steps",
)


def resolve_settings(
    options: Mapping[str, str | None], environ: Mapping[str, str] = os.environ, demo: bool = False
) -> dict[str, str]:
    """{NAME: value} for every setting (and DEMO_DIR), by the precedence in the module docstring."""
    def pick(setting: Setting, demo_dir: str) -> str:
        if options.get(setting.dest) is not None:
            return str(options[setting.dest])
        if setting.name in environ:
            return environ[setting.name]
        if demo and setting.demo is not None:
            return setting.demo.format(demo_dir=demo_dir)
        return setting.default

    demo_dir = pick(DEMO_DIR_SETTING, "")
    values = {setting.name: pick(setting, demo_dir) for setting in SETTINGS}
    values[DEMO_DIR_SETTING.name] = demo_dir
    return values
