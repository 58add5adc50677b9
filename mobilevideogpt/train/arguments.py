"""Command-line arguments of the Stage-3 finetuning entry point (parsed by `HfArgumentParser`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import transformers

from ..constants import DEFAULT_SYSTEM_PROMPT, NUM_FRAMES, NUM_SELECT_K_FRAMES_IN_CHUNK


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        default="Amshaker/Mobile-VideoGPT-0.5B",
        metadata={"help": "Base checkpoint: hub id or local directory."},
    )
    num_select_k_frames_in_chunk: int | None = field(
        default=None,
        metadata={"help": f"Frames kept per chunk by the frame scorer (default: the checkpoint's, "
                  f"{NUM_SELECT_K_FRAMES_IN_CHUNK} as published)."},
    )
    topk: bool | None = field(
        default=None, metadata={"help": "Keep the highest-scoring frames; False keeps the lowest (default: checkpoint's)."}
    )
    visual_tokens: str | None = field(
        default=None,
        metadata={"help": "Visual tokens per video: all, a count (e.g. 600) or a fraction (e.g. 0.25); recorded in "
                  "the checkpoints (default: the base checkpoint's, all as published)."},
    )


@dataclass
class DataArguments:
    dataset_use: str = field(
        default="QVED_TRAIN",
        metadata={"help": "Registry names (comma-separated, e.g. QVED_TRAIN) or paths to annotation .json files."},
    )
    dataset_val: str | None = field(default=None, metadata={"help": "Evaluation set, same syntax as dataset_use."})
    num_frames: int | None = field(
        default=None, metadata={"help": f"Frames sampled per video (default: the model's, {NUM_FRAMES} as published)."}
    )
    system_prompt: str = field(default=DEFAULT_SYSTEM_PROMPT, metadata={"help": "System message of the template."})


@dataclass
class TrainingArguments(transformers.TrainingArguments):
    model_max_length: int = field(default=2048, metadata={"help": "Max text tokens per sample; each video's visual tokens come on top."})
    lora_enable: bool = field(default=True, metadata={"help": "Train LoRA adapters on the LLM's linear layers."})
    lora_r: int = 64
    lora_alpha: int = 128
    lora_dropout: float = 0.05
    mm_projector_lr: float | None = field(
        default=2e-5, metadata={"help": "Learning rate of both ETP projectors (None: same as learning_rate)."}
    )
    tune_projectors: bool = field(default=True, metadata={"help": "Train both ETP projectors fully."})
    remove_unused_columns: bool = False
    resume: bool = field(
        default=False, metadata={"help": "Continue from the latest complete checkpoint-N in output_dir."}
    )
    overwrite: bool = field(
        default=False,
        metadata={"help": "Replace the run output_dir holds (its checkpoints, logs, run.json; other files stay)."},
    )
