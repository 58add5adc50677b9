"""One Stage-3 training step (LoRA on the LLM + both projectors, frozen towers): time and peak memory.

    python benchmarks/bench_train_step.py                      # tiny config (published geometry) on CPU
    python benchmarks/bench_train_step.py --full-size --batch 4 --text-len 2048   # 0.5B, meant for a GPU

Random weights, random 16-frame videos, `--text-len` text tokens per sample on top of the 2402 visual
tokens, gradient checkpointing on, AdamW. Prints the median step time over `--steps` steps after one
warm-up step, and the peak memory (CUDA: max allocated; CPU: peak RSS of this process).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch
from peft import LoraConfig, get_peft_model

from mobilevideogpt.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from mobilevideogpt.model.configuration import MobileVideoGPTQwenConfig
from mobilevideogpt.runtime import resolve_device, resolve_dtype
from mobilevideogpt.model.modeling import MobileVideoGPTQwenForCausalLM
from mobilevideogpt.model.tiny import tiny_config
from mobilevideogpt.train.memory import GIB, TrainingShape, estimate_training_memory, model_sizes
from mobilevideogpt.train.model_setup import LLM_LORA_TARGETS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full-size", action="store_true", help="the published 0.5B architecture")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--text-len", type=int, default=64, help="text tokens per sample (besides visual tokens)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:N")
    parser.add_argument("--dtype", default="auto", help="auto (bf16/fp16 on CUDA, fp32 on CPU), fp32, bf16, fp16")
    parser.add_argument("--lora-r", type=int, default=64)
    args = parser.parse_args()

    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    config = MobileVideoGPTQwenConfig.published() if args.full_size else tiny_config()
    before_model = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    torch.manual_seed(0)
    model = MobileVideoGPTQwenForCausalLM(config).to(device=device, dtype=dtype)
    model = stage3_model(model, args.lora_r, 2 * args.lora_r)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    inputs = random_batch(config, args.batch, args.text_len, device)

    times = []
    for step in range(args.steps + 1):
        sync(device)
        start = time.perf_counter()
        loss = model(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(device)
        if step:
            times.append(time.perf_counter() - start)

    # train/memory.py's estimate of the same step (peft's default LoRA dropout is 0); on CPU plus the RSS the
    # interpreter and libraries held before the model existed.
    shape = TrainingShape(
        batch=args.batch, text_tokens=args.text_len - 1, supervised_tokens=args.text_len - args.text_len // 2,
        lora_r=args.lora_r, lora_dropout=0.0, precision="fp32" if dtype == torch.float32 else "bf16",
        activation_checkpointing=True,
    )  # fmt: skip
    estimate = estimate_training_memory(model_sizes(config), shape, cuda=False).total
    if device.type == "cuda":
        peak = f"{torch.cuda.max_memory_allocated(device) / GIB:.2f} GiB (CUDA max allocated)"
        where = torch.cuda.get_device_name(device)
    else:
        peak = f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB:.2f} GiB (peak RSS)"
        estimate += before_model
        where = f"CPU, {torch.get_num_threads()} threads"
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    seq = args.text_len - 1 + config.visual_tokens_per_video
    print(f"{'full-size 0.5B' if args.full_size else 'tiny'} Mobile-VideoGPT, {dtype}, {where}")
    print("| batch | sequence | trainable params | median step (s) | peak memory | estimate |")
    print("|------:|---------:|-----------------:|----------------:|-------------|---------:|")
    print(
        f"| {args.batch:5d} | {seq:8d} | {trainable:16,} | {statistics.median(times):15.3f} | {peak} "
        f"| {estimate / GIB:.2f} GiB |"
    )


def stage3_model(model: torch.nn.Module, lora_r: int, lora_alpha: int, lora_dropout: float = 0.0) -> torch.nn.Module:
    """What trains in Stage 3 (as `train/model_setup.py` sets it up): LoRA on the LLM's linear layers, both
    projectors in full, everything else frozen; non-reentrant gradient checkpointing on, training mode."""
    model.config.use_cache = False
    model.requires_grad_(False)
    lora = LoraConfig(r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, target_modules=LLM_LORA_TARGETS,
                      bias="none", task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    for projector in model.get_base_model().model.projectors:
        projector.requires_grad_(True)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    return model


def random_batch(config, batch: int, text_len: int, device: torch.device) -> dict[str, torch.Tensor]:
    """`batch` samples of `text_len` random text tokens (one video placeholder, the second half supervised) and
    random 16-frame videos for both towers: the model's keyword arguments."""
    ids = torch.randint(0, 150_000, (batch, text_len), device=device)
    ids[:, text_len // 4] = IMAGE_TOKEN_INDEX
    labels = ids.clone()
    labels[:, : text_len // 2] = IGNORE_INDEX
    frames = config.num_frames
    size = config.clip_vision().image_size
    images = torch.randn(batch, frames, 3, size, size, device=device)
    context = torch.randn(batch, frames, 3, size, size, device=device)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels, "images": images,
            "context_images": context}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


if __name__ == "__main__":
    main()
