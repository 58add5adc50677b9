"""HF Trainer with the two things Stage 3 needs: a projector learning rate, and self-contained checkpoints.

Each checkpoint folder holds the LoRA adapter (PEFT, safetensors), the other trainable weights (both ETP
projectors) in `non_lora_trainables.safetensors` under plain model keys, the model config, the tokenizer,
the trainer/optimizer state, and finally the `COMPLETE` marker.
"""

from __future__ import annotations

import os

import torch
from safetensors.torch import save_file
from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..checkpoints import NON_LORA_WEIGHTS, mark_complete

PROJECTOR_KEY = "mm_projector"  # matches mm_projector and image_mm_projector
PEFT_PREFIX = "base_model.model."


def non_lora_trainable_names(model: torch.nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad and "lora_" not in n]


def strip_peft_prefix(name: str) -> str:
    return name[len(PEFT_PREFIX) :] if name.startswith(PEFT_PREFIX) else name


class MobileVideoGPTTrainer(Trainer):
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

    def _save_checkpoint(self, model, trial) -> None:
        super()._save_checkpoint(model, trial)
        # Every rank must have written its shards and states before the folder is declared complete.
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
            mark_complete(folder, self.state.global_step)

    def save_final(self, output_dir: str) -> None:
        """Adapter + projectors + config + tokenizer (no optimizer state), marked complete."""
        self.save_model(output_dir)
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            self.state.save_to_json(os.path.join(output_dir, "trainer_state.json"))
            mark_complete(output_dir, self.state.global_step)
