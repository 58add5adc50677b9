"""Stage-3 finetuning: LoRA on the LLM + both ETP projectors, frozen towers, DeepSpeed ZeRO-3.

`run(model_args, data_args, training_args)` is what each rank executes; `mvgpt train` (`bash
scripts/finetune_qved.sh`) starts the ranks through the DeepSpeed launcher.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch
import transformers
from transformers import AutoTokenizer

from ..checkpoints import FINAL_CHECKPOINT, latest_complete_checkpoint
from ..config import resolve_datasets
from ..data.collator import VideoSFTCollator
from ..data.dataset import SupervisedVideoDataset
from .arguments import DataArguments, ModelArguments, TrainingArguments
from .model_setup import load_model_for_training, trainable_summary
from .plots import plot_loss_curve
from .trainer import MobileVideoGPTTrainer

logger = logging.getLogger("mobilevideogpt.train")


def build_datasets(data_args: DataArguments, training_args: TrainingArguments, tokenizer, config):
    """Train/eval datasets and the collator, with the frame geometry the model was built for."""
    visual_tokens = config.visual_tokens_per_video
    # MAXLEN is a text budget, as in the published recipe: each video's visual tokens come on top.
    max_length = training_args.model_max_length + visual_tokens

    def make(spec: str) -> SupervisedVideoDataset:
        return SupervisedVideoDataset(
            resolve_datasets(spec),
            tokenizer,
            model_max_length=max_length,
            num_visual_tokens=visual_tokens,
            num_frames=data_args.num_frames or config.num_frames,
            image_size=config.clip_vision().image_size,
            system_prompt=data_args.system_prompt,
            seed=training_args.seed,
        )

    train = make(data_args.dataset_use)
    val = make(data_args.dataset_val) if data_args.dataset_val else None
    return train, val, VideoSFTCollator.from_tokenizer(tokenizer, max_length)


def run(model_args: ModelArguments, data_args: DataArguments, training_args: TrainingArguments) -> MobileVideoGPTTrainer:
    """Train, save `checkpoint-final/` and the loss curve; returns the trainer (its model is the trained one)."""
    transformers.set_seed(training_args.seed)
    if training_args.deepspeed and training_args.use_cpu:
        # On CPU, accelerate starts gloo but not DeepSpeed's communication layer, which would then size ZeRO for
        # a single rank; joining it here makes several CPU ranks partition and agree on batch sizes.
        import deepspeed

        deepspeed.init_distributed(dist_backend="gloo")
    # TrainingArguments exist before the model: with a ZeRO-3 config, transformers then builds it partitioned.
    tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path)
    model = load_model_for_training(model_args, training_args)
    if training_args.should_log:
        logger.info("trainable parameters:\n%s", trainable_summary(model))

    train_set, val_set, collator = build_datasets(data_args, training_args, tokenizer, model.config)
    trainer = MobileVideoGPTTrainer(
        model=model,
        args=training_args,
        train_dataset=train_set,
        eval_dataset=val_set,
        data_collator=collator,
        processing_class=tokenizer,
    )
    if training_args.should_save:
        save_hyperparameters(training_args.output_dir, model_args, data_args, training_args, len(train_set))

    resume = None
    if training_args.resume:
        resume = latest_complete_checkpoint(training_args.output_dir)
        if resume is None:
            logger.warning("--resume: no complete checkpoint in %s, starting from scratch", training_args.output_dir)
        else:
            logger.info("resuming from %s", resume)
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)

    final_dir = os.path.join(training_args.output_dir, FINAL_CHECKPOINT)
    trainer.save_final(final_dir)
    if training_args.should_save:
        curve = plot_loss_curve(trainer.state.log_history, Path(training_args.output_dir) / "loss_curve.png")
        logger.info("saved %s%s", final_dir, f"; loss curve {curve}" if curve else "")
        logger.info("training data: %s", train_set.skip_summary())
    return trainer


def save_hyperparameters(output_dir, model_args, data_args, training_args, num_train_samples: int) -> None:
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    world = max(training_args.world_size, 1)
    record = {
        "model": vars(model_args),
        "data": {**vars(data_args), "num_train_samples": num_train_samples},
        "training": {
            k: v
            for k, v in training_args.to_dict().items()
            if isinstance(v, (str, int, float, bool, type(None), list, dict))
        },
        "effective_batch_size": training_args.per_device_train_batch_size
        * training_args.gradient_accumulation_steps
        * world,
        "world_size": world,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    with open(Path(output_dir) / "hyperparameters.json", "w") as f:
        json.dump(record, f, indent=2, default=str)

