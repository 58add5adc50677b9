"""`mvgpt train`'s memory line: the expected peak memory of a rank (train/memory.py) for the resolved recipe, and
a warning naming the setting to change when it exceeds the visible GPU's memory (or this machine's, on CPU)."""

from __future__ import annotations

import os
from dataclasses import replace

from ..constants import BASE_MODEL_ID


def _model_config(model: str):
    from ..model.configuration import MobileVideoGPTQwenConfig

    try:
        return MobileVideoGPTQwenConfig.from_pretrained(model, local_files_only=True)
    except (OSError, ValueError):
        if model == BASE_MODEL_ID:
            return MobileVideoGPTQwenConfig.published()
        return None


def _tokenizer(model: str):
    from transformers import AutoTokenizer

    from ..tokenizer import build_qwen25_tokenizer

    try:
        return AutoTokenizer.from_pretrained(model, local_files_only=True)
    except (OSError, ValueError):
        return build_qwen25_tokenizer()  # the published model's vocabulary


def _text_lengths(values: dict[str, str], model: str) -> tuple[int, int, str]:
    """(text tokens, supervised tokens, where they come from) per sample for the recipe's training data."""
    from ..config import resolve_datasets
    from ..train.memory import longest_sample

    maxlen = int(values["MAXLEN"])
    try:
        files = [entry.annotation_path for entry in resolve_datasets(values["DATASET"])]
        text, supervised = longest_sample(files, _tokenizer(model), maxlen)
    except (OSError, ValueError):
        return maxlen, maxlen, f"MAXLEN text tokens, all supervised (no readable {values['DATASET']} to measure)"
    if not text:
        return maxlen, maxlen, "no usable training sample: MAXLEN text tokens, all supervised"
    return text, supervised, f"its longest sample: {text} text tokens, {supervised} supervised"


def _device_memory(gpus: int) -> tuple[str, int]:
    """(name, bytes) of the memory a rank has: GPU 0's, or this machine's RAM."""
    if gpus:
        import torch

        properties = torch.cuda.get_device_properties(0)
        return properties.name, properties.total_memory
    return "this machine's RAM", os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def memory_report(values: dict[str, str], gpus: int, precision: str, ranks: int) -> list[str]:
    """Lines for the recipe's printout: the estimate by part, and a warning with the fix when it does not fit."""
    from ..train.memory import GIB, TrainingShape, estimate_training_memory, largest_fitting_batch, model_sizes

    from ..model.token_budget import parse_visual_tokens, set_visual_token_budget

    config = _model_config(values["MODEL"])
    if config is None:
        return [f"  memory per rank   unknown: no configuration of {values['MODEL']} on this machine"]
    set_visual_token_budget(config, parse_visual_tokens(values["VISUAL_TOKENS"]))
    text, supervised, source = _text_lengths(values, values["MODEL"])
    shape = TrainingShape(
        batch=int(values["BATCH"]), text_tokens=text, supervised_tokens=supervised, lora_r=int(values["LORA_R"]),
        lora_dropout=0.05, precision=precision, activation_checkpointing=values["GRAD_CKPT"] == "True",
        world_size=ranks,
    )  # fmt: skip
    sizes = model_sizes(config)
    estimate = estimate_training_memory(sizes, shape, cuda=gpus > 0)
    parts = ", ".join(f"{name} {size / GIB:.2f}" for name, size in estimate.parts().items() if size)
    lines = [
        f"  memory per rank   ~{estimate.total / GIB:.1f} GiB expected peak ({parts} GiB)",
        f"                    for {source}",
    ]
    name, available = _device_memory(gpus)
    if estimate.total > available:
        fixes = []
        if not shape.activation_checkpointing:
            saved = estimate.total - estimate_training_memory(
                sizes, replace(shape, activation_checkpointing=True), cuda=gpus > 0
            ).total
            fixes.append(f"GRAD_CKPT=True (saves ~{saved / GIB:.1f} GiB)")
        fits = largest_fitting_batch(sizes, shape, available, cuda=gpus > 0)
        if fits:
            gacc = max(1, round(int(values["GACC"]) * shape.batch / fits))
            fixes.append(f"BATCH={fits} GACC={gacc} (about the same effective batch)")
        else:
            fixes.append("a shorter MAXLEN, or more GPUs (NUM_GPUS) to partition the optimizer")
        lines.append(
            f"warning: ~{estimate.total / GIB:.1f} GiB exceeds the {available / GIB:.1f} GiB of {name}; try "
            + " or ".join(fixes)
        )
    return lines
