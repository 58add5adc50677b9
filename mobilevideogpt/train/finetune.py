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

from ..checkpoints import FINAL_CHECKPOINT, resume_checkpoint
from ..config import resolve_datasets
from ..data.collator import VideoSFTCollator
from ..data.dataset import SupervisedVideoDataset
from .arguments import DataArguments, ModelArguments, TrainingArguments
from .model_setup import fill_unset_pad_token, load_model_for_training, trainable_summary
from .plots import plot_loss_curve
from .run_folder import claim_run_folder
from .trainer import MobileVideoGPTTrainer

logger = logging.getLogger("mobilevideogpt.train")
# How messages name the text budget: the trainer flag and the variable of scripts/finetune_qved.sh that sets it.
LENGTH_SETTING = "MAXLEN (--model_max_length)"


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
            length_setting=(LENGTH_SETTING, visual_tokens),
        )

    train = make(data_args.dataset_use)
    val = make(data_args.dataset_val) if data_args.dataset_val else None
    return train, val, VideoSFTCollator.from_tokenizer(tokenizer, max_length)


def on_main_process(compute):
    """`compute()` on the process that writes shared files (global rank 0); every rank returns its result or
    raises its error, so no rank waits for a partner that has given up."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return compute()
    box = [None]
    if dist.get_rank() == 0:
        try:
            box[0] = ("ok", compute())
        except Exception as err:  # noqa: BLE001 - handed to every rank, raised there
            box[0] = ("error", err)
    dist.broadcast_object_list(box, src=0)
    status, value = box[0]
    if status == "error":
        raise value
    return value


def choose_resume_checkpoint(output_dir: str) -> Path | None:
    """The newest complete, intact checkpoint of the run in `output_dir`; says which newer ones it passed over."""
    checkpoint, passed_over = resume_checkpoint(output_dir)
    for reason in passed_over:
        logger.warning("--resume: %s", reason)
    if checkpoint is None:
        logger.warning("--resume: no complete checkpoint in %s, starting from scratch", output_dir)
    else:
        logger.warning("resuming from %s%s", checkpoint, " instead" if passed_over else "")
    return checkpoint


def run(model_args: ModelArguments, data_args: DataArguments, training_args: TrainingArguments) -> MobileVideoGPTTrainer:
    """Train, save `checkpoint-final/` and the loss curve; returns the trainer (its model is the trained one)."""
    transformers.set_seed(training_args.seed)
    if training_args.deepspeed and training_args.use_cpu:
        # On CPU, accelerate starts gloo but not DeepSpeed's communication layer, which would then size ZeRO for
        # a single rank; joining it here makes several CPU ranks partition and agree on batch sizes.
        import deepspeed

        deepspeed.init_distributed(dist_backend="gloo")
    # The output folder is checked and claimed before anything heavy loads.
    output_dir = training_args.output_dir
    run_id = on_main_process(
        lambda: claim_run_folder(output_dir, resume=training_args.resume, overwrite=training_args.overwrite)
    )
    resume = on_main_process(lambda: choose_resume_checkpoint(output_dir)) if training_args.resume else None

    # TrainingArguments exist before the model: with a ZeRO-3 config, transformers then builds it partitioned.
    tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path)
    model = load_model_for_training(model_args, training_args)
    fill_unset_pad_token(model, tokenizer)
    if training_args.should_log:
        logger.info("trainable parameters:\n%s", trainable_summary(model))

    train_set, val_set, collator = build_datasets(data_args, training_args, tokenizer, model.config)
    effective_batch = check_batch_size(training_args, len(train_set))
    trainer = MobileVideoGPTTrainer(
        model=model,
        args=training_args,
        train_dataset=train_set,
        eval_dataset=val_set,
        data_collator=collator,
        processing_class=tokenizer,
        run_id=run_id,
    )
    if training_args.should_save:
        save_hyperparameters(output_dir, model_args, data_args, training_args, len(train_set), effective_batch)
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)

    final_dir = os.path.join(output_dir, FINAL_CHECKPOINT)
    trainer.save_final(final_dir)
    if training_args.should_save:
        curve = plot_loss_curve(trainer.state.log_history, Path(output_dir) / "loss_curve.png")
        logger.info("saved %s%s", final_dir, f"; loss curve {curve}" if curve else "")
        logger.info("training data: %s", train_set.skip_summary())
    return trainer


def check_batch_size(training_args: TrainingArguments, num_samples: int) -> int:
    """The samples one optimizer step really sees; a batch larger than the whole dataset is an error."""
    world = max(training_args.world_size, 1)
    per_step = training_args.per_device_train_batch_size * world
    if per_step > num_samples:
        raise ValueError(
            f"the batch (per_device_train_batch_size {training_args.per_device_train_batch_size} × {world} rank(s) = "
            f"{per_step}; BATCH in scripts/finetune_qved.sh) is larger than the {num_samples} training samples: every "
            f"step would see a short batch; use a batch of at most {num_samples // world}"
        )
    effective = per_step * training_args.gradient_accumulation_steps
    if effective > num_samples:
        logger.warning(
            "batch × gradient accumulation × ranks = %d exceeds the %d training samples: each optimizer step sees "
            "the whole dataset once, %d samples (lower gradient_accumulation_steps, GACC, to make them agree)",
            effective, num_samples, num_samples,
        )
        return num_samples
    return effective


def save_hyperparameters(
    output_dir, model_args, data_args, training_args, num_train_samples: int, effective_batch_size: int
) -> None:
    world = max(training_args.world_size, 1)
    record = {
        "model": vars(model_args),
        "data": {**vars(data_args), "num_train_samples": num_train_samples},
        "training": {
            k: v
            for k, v in training_args.to_dict().items()
            if isinstance(v, (str, int, float, bool, type(None), list, dict))
        },
        "effective_batch_size": effective_batch_size,
        "world_size": world,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    with open(Path(output_dir) / "hyperparameters.json", "w") as f:
        json.dump(record, f, indent=2, default=str)

