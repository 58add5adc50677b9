"""Training checkpoints for inference tests, written by the real trainer's save path (no optimisation steps).

`make_training_checkpoint` loads a base exactly as training does (LoRA on the LLM, trainable projectors),
moves every trainable tensor by seeded noise (LoRA B starts at zero, so an untouched adapter would change
nothing), and saves through `MobileVideoGPTTrainer.save_final`: adapter, `non_lora_trainables.safetensors`,
config, tokenizer, trainer state and the `COMPLETE` marker, as a finetuning run leaves them.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mobilevideogpt.checkpoints import FINAL_CHECKPOINT

LORA_R, LORA_ALPHA = 4, 8


def make_training_checkpoint(
    base: Path, run_dir: Path, seed: int = 1, scale: float = 0.05, k: int = 1, name: str = FINAL_CHECKPOINT,
    visual_tokens: str | None = None,
) -> Path:
    from transformers import AutoTokenizer

    from mobilevideogpt.train.arguments import ModelArguments, TrainingArguments
    from mobilevideogpt.train.model_setup import load_model_for_training
    from mobilevideogpt.train.trainer import MobileVideoGPTTrainer

    args = TrainingArguments(
        output_dir=str(run_dir), use_cpu=True, report_to="none", lora_r=LORA_R, lora_alpha=LORA_ALPHA, lora_dropout=0.0
    )
    model_args = ModelArguments(model_name_or_path=str(base), num_select_k_frames_in_chunk=k, visual_tokens=visual_tokens)
    # LoRA's A matrices start from the global generator: seeded, the checkpoint does not depend on which tests ran
    # before the fixture that asks for it (a random tiny model's greedy answer can be whitespace for some seeds).
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = load_model_for_training(model_args, args)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, param in sorted(model.named_parameters()):
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=generator) * scale)
    trainer = MobileVideoGPTTrainer(model=model, args=args, processing_class=AutoTokenizer.from_pretrained(base))
    out = run_dir / name
    trainer.save_final(str(out))
    return out
