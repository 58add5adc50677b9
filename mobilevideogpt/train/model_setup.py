"""What trains in Stage 3: LoRA adapters on the LLM's linear layers and both ETP projectors in full.

Everything else — vision towers, embeddings, lm_head, norms — stays frozen. LoRA targets are matched by full
module name, so the towers' and projectors' Linear layers are never wrapped.
"""

from __future__ import annotations

from collections import Counter

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

import mobilevideogpt  # noqa: F401  (registers the MobileVideoGPT auto classes)

from ..model.token_budget import parse_visual_tokens, set_visual_token_budget
from .arguments import ModelArguments, TrainingArguments

# Attention and MLP projections of every Qwen2 decoder layer (PEFT matches a string target with re.fullmatch).
LLM_LORA_TARGETS = r".*model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"


def fill_unset_pad_token(model, tokenizer) -> None:
    """Give the model the tokenizer's pad token when its config declares none (Qwen2.5's does not).

    The Trainer would do the same, with a warning that something differs; an unset id differs from nothing."""
    pad = tokenizer.pad_token_id
    if pad is None:
        return
    for config in (model.config.get_text_config(), getattr(model, "generation_config", None)):
        if config is not None and config.pad_token_id is None:
            config.pad_token_id = pad


def training_dtype(training_args: TrainingArguments) -> torch.dtype:
    if training_args.bf16:
        return torch.bfloat16
    if training_args.fp16:
        return torch.float16
    return torch.float32


def load_model_for_training(model_args: ModelArguments, training_args: TrainingArguments) -> torch.nn.Module:
    # Only explicit overrides: through the Auto classes a None would overwrite the checkpoint's config value.
    overrides = {
        name: value
        for name, value in (("num_select_k_frames_in_chunk", model_args.num_select_k_frames_in_chunk), ("topk", model_args.topk))
        if value is not None
    }
    model = AutoModelForCausalLM.from_pretrained(
        model_args.model_name_or_path, dtype=training_dtype(training_args), **overrides
    )
    model.config.use_cache = False
    if model_args.visual_tokens is not None and model.config.has_vision:
        set_visual_token_budget(model.config, parse_visual_tokens(model_args.visual_tokens))
    model.requires_grad_(False)
    if training_args.lora_enable:
        lora = LoraConfig(
            r=training_args.lora_r,
            lora_alpha=training_args.lora_alpha,
            lora_dropout=training_args.lora_dropout,
            target_modules=LLM_LORA_TARGETS,
            bias="none",
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, lora)
    if training_args.tune_projectors:
        base = model.get_base_model() if training_args.lora_enable else model
        for projector in base.model.projectors:
            projector.requires_grad_(True)
    if training_args.activation_checkpointing and not training_args.activation_checkpointing_kwargs:
        # Non-reentrant checkpointing needs no input-grad hooks and works with frozen embeddings.
        training_args.activation_checkpointing_kwargs = {"use_reentrant": False}
    return model


def _group(name: str) -> str:
    if "lora_" in name:
        return "LoRA (LLM linear layers)"
    if "image_mm_projector" in name:
        return "image_mm_projector (ETP)"
    if "mm_projector" in name:
        return "mm_projector (ETP)"
    if "image_vision_tower" in name:
        return "CLIP tower"
    if "vision_tower" in name:
        return "VideoMamba tower"
    return "LLM"


def trainable_summary(model: torch.nn.Module) -> str:
    """Parameter counts per part, trainable and frozen (ZeRO-3-partitioned parameters count in full)."""
    trainable: Counter[str] = Counter()
    frozen: Counter[str] = Counter()
    for name, param in model.named_parameters():
        numel = getattr(param, "ds_numel", param.numel())
        (trainable if param.requires_grad else frozen)[_group(name)] += numel
    rows = [f"  {'part':<28}{'trainable':>14}{'frozen':>14}"]
    for part in sorted(set(trainable) | set(frozen)):
        rows.append(f"  {part:<28}{trainable[part]:>14,}{frozen[part]:>14,}")
    rows.append(f"  {'total':<28}{sum(trainable.values()):>14,}{sum(frozen.values()):>14,}")
    return "\n".join(rows)
