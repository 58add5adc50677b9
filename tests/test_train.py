"""Stage-3 finetuning: ZeRO-3 on two CPU ranks, resume equivalence, what trains, checkpoint layout, the script."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mobilevideogpt.checkpoints import COMPLETE_MARKER, NON_LORA_WEIGHTS, latest_complete_checkpoint
from mobilevideogpt.train.launch import launcher_command
from mobilevideogpt.train.plots import plot_loss_curve

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fast_checkpoint(tmp_path_factory) -> Path:
    """Tiny model with the cheap geometry (112 px, 4 frames): training steps take well under a second."""
    from mobilevideogpt.model.tiny import fast_geometry, save_tiny_checkpoint

    return save_tiny_checkpoint(tmp_path_factory.mktemp("fast") / "base", seed=0, **fast_geometry())


@pytest.fixture(scope="module")
def repeated_batch(sample_dataset_dir: Path, tmp_path_factory) -> Path:
    """The same QVED sample eight times, so every batch is identical and the loss must fall."""
    records = json.loads((sample_dataset_dir / "qved_train.json").read_text())
    record = next(r for r in records if "squats" in r["video"])
    root = tmp_path_factory.mktemp("repeated")
    shutil.copytree(sample_dataset_dir, root / "dataset")
    annotation = root / "dataset" / "repeated.json"
    annotation.write_text(json.dumps([record] * 8))
    return annotation


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train(ranks: int, checkpoint: Path, annotation: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    trainer_args = [
        "--deepspeed", "scripts/zero3.json",
        "--model_name_or_path", str(checkpoint),
        "--dataset_use", str(annotation),
        "--output_dir", str(out),
        "--use_cpu", "True",
        "--per_device_train_batch_size", "1",
        "--learning_rate", "1e-2", "--mm_projector_lr", "1e-2",
        "--lora_r", "8", "--lora_alpha", "16",
        "--lr_scheduler_type", "constant",
        "--logging_steps", "1",
        "--model_max_length", "128",
        "--gradient_checkpointing", "True",
        "--dataloader_num_workers", "0",
        "--report_to", "none",
        "--seed", "7",
        *extra,
    ]
    cmd = launcher_command(trainer_args, num_gpus=ranks, master_port=free_port())
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def losses(run_dir: Path) -> list[float]:
    state = json.loads((run_dir / "checkpoint-final" / "trainer_state.json").read_text())
    return [entry["loss"] for entry in state["log_history"] if "loss" in entry]


def test_zero3_two_cpu_ranks_train_lora_and_projectors_only(fast_checkpoint, repeated_batch, tmp_path):
    out = tmp_path / "run"
    result = train(2, fast_checkpoint, repeated_batch, out, "--max_steps", "6", "--save_steps", "3")
    assert "world_size=2" in result.stdout + result.stderr or "dist_world_size=2" in result.stdout + result.stderr

    loss = losses(out)
    assert len(loss) == 6
    assert sum(loss[-2:]) / 2 < sum(loss[:2]) / 2 - 0.05, loss

    for name in ("checkpoint-3", "checkpoint-6", "checkpoint-final"):
        ckpt = out / name
        assert (ckpt / COMPLETE_MARKER).is_file()
        for f in ("adapter_model.safetensors", "adapter_config.json", NON_LORA_WEIGHTS, "config.json", "tokenizer.json"):
            assert (ckpt / f).is_file(), f"{name}/{f}"
    assert (out / "checkpoint-3" / "global_step3").is_dir()
    assert latest_complete_checkpoint(out) == out / "checkpoint-6"

    adapter = load_file(out / "checkpoint-final" / "adapter_model.safetensors")
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b), "LoRA B starts at zero: it must have trained"
    assert all(".layers." in k for k in adapter), "LoRA only on the LLM's decoder layers"
    assert not any(part in k for k in adapter for part in ("vision_tower", "mm_projector", "lm_head"))

    base = load_file(fast_checkpoint / "model.safetensors")
    projectors = load_file(out / "checkpoint-final" / NON_LORA_WEIGHTS)
    assert {k.split(".")[1] for k in projectors} == {"mm_projector", "image_mm_projector"}
    assert set(projectors) == {k for k in base if "mm_projector" in k}
    changed = [k for k in projectors if not torch.equal(projectors[k].float(), base[k].float())]
    assert len(changed) == len(projectors), f"unchanged projector tensors: {set(projectors) - set(changed)}"

    summary = json.loads((out / "hyperparameters.json").read_text())
    assert summary["world_size"] == 2 and summary["effective_batch_size"] == 2
    assert (out / "loss_curve.png").stat().st_size > 1000


def test_resume_matches_an_uninterrupted_run(fast_checkpoint, repeated_batch, tmp_path):
    args = ("--max_steps", "4", "--save_steps", "2")
    whole = tmp_path / "whole"
    train(1, fast_checkpoint, repeated_batch, whole, *args)
    # A run that stopped after step 2: its output dir holds checkpoint-2 and an interrupted, unmarked save.
    resumed = tmp_path / "resumed"
    shutil.copytree(whole / "checkpoint-2", resumed / "checkpoint-2")
    shutil.copytree(whole / "checkpoint-4", resumed / "checkpoint-4")
    (resumed / "checkpoint-4" / COMPLETE_MARKER).unlink()
    assert latest_complete_checkpoint(resumed) == resumed / "checkpoint-2"
    shutil.rmtree(resumed / "checkpoint-4")
    train(1, fast_checkpoint, repeated_batch, resumed, *args, "--resume", "True")

    for f in ("adapter_model.safetensors", NON_LORA_WEIGHTS):
        a = load_file(whole / "checkpoint-4" / f)
        b = load_file(resumed / "checkpoint-4" / f)
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=k)
    assert losses(resumed)[-2:] == pytest.approx(losses(whole)[-2:], rel=1e-5)


def test_optimizer_puts_projectors_in_their_own_learning_rate_group(tmp_path):
    from peft import LoraConfig, get_peft_model

    from mobilevideogpt.model.tiny import build_tiny_model, fast_geometry
    from mobilevideogpt.train.arguments import TrainingArguments
    from mobilevideogpt.train.model_setup import LLM_LORA_TARGETS
    from mobilevideogpt.train.trainer import MobileVideoGPTTrainer

    model = build_tiny_model(**fast_geometry())
    model.requires_grad_(False)
    model = get_peft_model(model, LoraConfig(r=4, target_modules=LLM_LORA_TARGETS, task_type="CAUSAL_LM"))
    for projector in model.get_base_model().model.projectors:
        projector.requires_grad_(True)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, learning_rate=1e-4, mm_projector_lr=2e-5,
                             weight_decay=0.1, report_to=[])
    optimizer = MobileVideoGPTTrainer(model=model, args=args).create_optimizer()
    by_lr: dict[float, int] = {}
    for group in optimizer.param_groups:
        by_lr[group["lr"]] = by_lr.get(group["lr"], 0) + sum(p.numel() for p in group["params"])
    projector_params = sum(p.numel() for n, p in model.named_parameters() if "mm_projector" in n)
    lora_params = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    assert by_lr == {1e-4: lora_params, 2e-5: projector_params}
    # Biases of the projectors carry no weight decay.
    decays = {(g["lr"], g["weight_decay"]) for g in optimizer.param_groups}
    assert (2e-5, 0.0) in decays and (2e-5, 0.1) in decays


def test_lora_targets_only_llm_linear_layers():
    import re

    from mobilevideogpt.model.tiny import build_tiny_model
    from mobilevideogpt.train.model_setup import LLM_LORA_TARGETS

    model = build_tiny_model()
    linear = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    targeted = {n for n in linear if re.fullmatch(LLM_LORA_TARGETS, n)}
    per_layer = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert targeted == {n for n in linear if n.startswith("model.layers.") and n.split(".")[-1] in per_layer}
    assert len(targeted) == 7 * model.config.num_hidden_layers


def test_loss_curve_png(tmp_path):
    history = [{"step": i, "loss": 3.0 / i} for i in range(1, 6)] + [{"step": 5, "eval_loss": 0.9}]
    path = plot_loss_curve(history, tmp_path / "loss.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_loss_curve([{"step": 1, "learning_rate": 0.1}], tmp_path / "none.png") is None


def test_training_loss_skips_unsupervised_logits_but_equals_the_full_loss():
    from mobilevideogpt.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
    from mobilevideogpt.model.tiny import build_tiny_model, fast_geometry

    model = build_tiny_model(**fast_geometry())
    for projector in model.model.projectors:
        projector.requires_grad_(True)
    ids = torch.tensor([[5, 6, IMAGE_TOKEN_INDEX, 7, 8, 9, 10], [11, IMAGE_TOKEN_INDEX, 12, 13, 14, 0, 0]])
    mask = torch.tensor([[1] * 7, [1] * 5 + [0, 0]])
    labels = torch.where((ids == IMAGE_TOKEN_INDEX) | (mask == 0), IGNORE_INDEX, ids)
    labels[:, :2] = IGNORE_INDEX
    g = torch.Generator().manual_seed(0)
    images, context = (torch.randn(2, 4, 3, 112, 112, generator=g) for _ in range(2))
    batch = dict(input_ids=ids, attention_mask=mask, labels=labels, images=images, context_images=context)
    with torch.no_grad():
        full = model.eval()(**batch)
        assert full.logits.shape[1] == 7 - 1 + model.config.visual_tokens_per_video
        sparse = model.train()(**batch)
        assert sparse.logits is None
        torch.testing.assert_close(sparse.loss, full.loss, rtol=1e-5, atol=1e-6)
        n = int((labels[:, 1:] != IGNORE_INDEX).sum())
        scaled = model(**batch, num_items_in_batch=torch.tensor(2 * n))
        torch.testing.assert_close(scaled.loss, full.loss / 2, rtol=1e-5, atol=1e-6)


def test_checkpoint_final_loads_as_the_trained_model(fast_checkpoint, repeated_batch, tmp_path):
    from transformers import HfArgumentParser

    from mobilevideogpt.model.assemble import load_model_and_tokenizer
    from mobilevideogpt.train.arguments import DataArguments, ModelArguments, TrainingArguments
    from mobilevideogpt.train.finetune import run

    out = tmp_path / "run"
    parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    args = parser.parse_args_into_dataclasses([
        "--model_name_or_path", str(fast_checkpoint), "--dataset_use", str(repeated_batch), "--output_dir", str(out),
        "--use_cpu", "True", "--max_steps", "3", "--save_steps", "10", "--per_device_train_batch_size", "2",
        "--learning_rate", "1e-2", "--mm_projector_lr", "1e-2", "--lora_r", "8", "--lora_alpha", "16",
        "--model_max_length", "128", "--report_to", "none", "--dataloader_num_workers", "0", "--logging_steps", "1",
    ])
    trainer = run(*args)
    batch = trainer.data_collator([trainer.train_dataset[0], trainer.train_dataset[1]])
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "images", "context_images")}
    with torch.no_grad():
        expected = trainer.model.eval()(**inputs).logits
        base, _ = load_model_and_tokenizer(fast_checkpoint, device="cpu", dtype="float32")
        before = base(**inputs).logits
        loaded, tokenizer = load_model_and_tokenizer(out / "checkpoint-final", device="cpu", dtype="float32")
        got = loaded(**inputs).logits
    assert (expected - before).abs().max() > 1e-3, "training changed nothing"
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert len(tokenizer) == len(trainer.processing_class)
