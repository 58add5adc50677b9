"""HF Trainer with what Stage 3 needs: a projector learning rate, self-contained checkpoints saved whole or not
at all, and a resume that runs no code from the checkpoint.

Each checkpoint folder holds the LoRA adapter (PEFT, safetensors), the other trainable weights (both ETP
projectors) in `non_lora_trainables.safetensors` under plain model keys, the model config, the tokenizer,
the trainer/optimizer state, and finally the `COMPLETE` marker (run id, step, every file's size and hash).
Every rank writes its part into `<run>/.saving/checkpoint-N`; once all have finished, the rank that writes
shared files marks it complete and renames it to `<run>/checkpoint-N` (see `checkpoints.swap_into_place`).
"""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from ..checkpoints import NON_LORA_WEIGHTS, STAGING_DIR, mark_complete, swap_into_place
from ..errors import first_line, is_write_failure, saving_error
from .safe_loading import refused_pickles, weights_only_unpickling


class ResumeError(RuntimeError):
    """The checkpoint to resume from cannot be loaded; the message names the file and what to do."""

PROJECTOR_KEY = "mm_projector"  # matches mm_projector and image_mm_projector
PEFT_PREFIX = "base_model.model."


def non_lora_trainable_names(model: torch.nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad and "lora_" not in n]


def strip_peft_prefix(name: str) -> str:
    return name[len(PEFT_PREFIX) :] if name.startswith(PEFT_PREFIX) else name


class MobileVideoGPTTrainer(Trainer):
    def __init__(self, *args, run_id: str | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.run_id = run_id  # recorded in every checkpoint's marker
        self._staging: Path | None = None

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        """AdamW groups: (projector or not) × (weight decay or not); projectors use `mm_projector_lr`."""
        opt_model = self.model if model is None else model
        if self.optimizer is None:
            decay = set(self.get_decay_parameter_names(opt_model))
            projector_lr = getattr(self.args, "mm_projector_lr", None)
            groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
            for name, param in opt_model.named_parameters():
                if param.requires_grad:
                    is_projector = projector_lr is not None and PROJECTOR_KEY in name
                    groups.setdefault((is_projector, name in decay), []).append(param)
            param_groups = []
            for (is_projector, decays), params in sorted(groups.items()):
                group = {"params": params, "weight_decay": self.args.weight_decay if decays else 0.0}
                if is_projector:
                    group["lr"] = projector_lr
                param_groups.append(group)
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            self.optimizer = optimizer_cls(param_groups, **optimizer_kwargs)
        return self.optimizer

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        super()._save(output_dir, state_dict)
        if not self.args.should_save:
            return
        output_dir = output_dir or self.args.output_dir
        model = self.accelerator.unwrap_model(self.model)
        names = non_lora_trainable_names(model)
        if names:
            # Under ZeRO-3 `state_dict` is the gathered (16-bit) copy of the trainable weights; otherwise read the model.
            source = state_dict if state_dict is not None else dict(model.named_parameters())
            missing = [n for n in names if n not in source]
            if missing:
                raise RuntimeError(f"Trainable weights absent from the saved state: {missing[:5]}")
            tensors = {strip_peft_prefix(n): source[n].detach().to("cpu").contiguous() for n in names}
            save_file(tensors, os.path.join(output_dir, NON_LORA_WEIGHTS), metadata={"format": "pt"})
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        base.config.save_pretrained(output_dir)

    def _get_output_dir(self, trial) -> str:
        # While a checkpoint is saved, the Trainer's `<output_dir>/checkpoint-N` lands under the staging folder.
        return str(self._staging) if self._staging is not None else super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial) -> None:
        run_dir = Path(super()._get_output_dir(trial))
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        self._save_staged(run_dir / name, lambda: super(MobileVideoGPTTrainer, self)._save_checkpoint(model, trial))
        # The Trainer looked for the best checkpoint under the staging folder; it is in the run folder now.
        best = run_dir / f"{PREFIX_CHECKPOINT_DIR}-{self.state.best_global_step}"
        if self.state.best_global_step and best.is_dir():
            self.state.best_model_checkpoint = str(best)
        if self.args.should_save and self.args.save_total_limit:
            rotate_checkpoints(str(run_dir), self.args.save_total_limit, self.state.best_model_checkpoint, use_mtime=True)

    def save_final(self, output_dir: str) -> None:
        """Adapter + projectors + config + tokenizer + trainer state (no optimizer state), saved whole or not at all."""
        target = Path(output_dir)

        def save() -> None:
            staged = self._staging / target.name
            self.save_model(str(staged))
            if self.args.should_save:
                self.state.save_to_json(str(staged / "trainer_state.json"))

        self._save_staged(target, save)

    def _save_staged(self, target: Path, save) -> None:
        """Run `save` (which writes `<staging>/<target.name>` on every rank), then mark it complete and move it to
        `target` once every rank has finished. A failure names the folder; the previous checkpoints stay."""
        staging = target.parent / STAGING_DIR
        staged = staging / target.name
        if self.args.should_save and staged.exists():
            shutil.rmtree(staged)  # left by an interrupted save of the same step
        self.accelerator.wait_for_everyone()
        self._staging = staging
        try:
            save()
        except Exception as err:
            if is_write_failure(err):
                raise saving_error(err, "checkpoint", staged) from err
            raise
        finally:
            self._staging = None
        # Every rank must have written its shards and states before the folder is declared complete.
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            try:
                mark_complete(staged, self.state.global_step, self.run_id)
                swap_into_place(staged, target)
            except OSError as err:
                raise saving_error(err, "checkpoint", staged) from err
            if not any(staging.iterdir()):
                staging.rmdir()
        self.accelerator.wait_for_everyone()

    def _prepare_for_training(self, max_steps, train_dataloader, resume_from_checkpoint):
        # Wrapping the model and loading the checkpoint's states happen here; name the file that broke a resume.
        try:
            return super()._prepare_for_training(max_steps, train_dataloader, resume_from_checkpoint)
        except pickle.UnpicklingError as err:
            if resume_from_checkpoint is None:
                raise
            refused = refused_pickles(resume_from_checkpoint) or [str(resume_from_checkpoint)]
            raise ResumeError(
                f"{refused[0]}: resume reads checkpoints with torch's weights-only unpickler and this file holds "
                "other objects, so it was not written by this training (or was altered); delete that checkpoint "
                "folder to resume from an earlier one, or start a new run"
            ) from err
        except (RuntimeError, OSError, EOFError, ValueError) as err:
            if resume_from_checkpoint is None:
                raise
            # Checkpoints with a file list are verified before this point; this is one without (copied by hand?).
            raise ResumeError(
                f"cannot resume from {resume_from_checkpoint} ({first_line(err)}): one of its files is damaged or "
                "does not belong to this model; delete that checkpoint folder to resume from an earlier one"
            ) from err

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        with weights_only_unpickling():
            return super().train(resume_from_checkpoint, *args, **kwargs)
