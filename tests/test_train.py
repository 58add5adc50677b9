"""Stage-3 finetuning: ZeRO-3 on two CPU ranks, resume equivalence, what trains, checkpoint layout, the script."""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mobilevideogpt.checkpoints import (
    COMPLETE_MARKER,
    INFERENCE_FILES,
    NON_LORA_WEIGHTS,
    STAGING_DIR,
    checkpoint_problems,
    latest_complete_checkpoint,
    mark_complete,
    read_marker,
    read_run_id,
    resolve_model_path,
    resume_checkpoint,
)
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


def trainer_args(checkpoint: Path, annotation: Path, out: Path, *extra: str) -> list[str]:
    return [
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
        "--activation_checkpointing", "True",
        "--dataloader_num_workers", "0",
        "--report_to", "none",
        "--seed", "7",
        *extra,
    ]


def train(
    ranks: int, checkpoint: Path, annotation: Path, out: Path, *extra: str, check: bool = True
) -> subprocess.CompletedProcess:
    """Train through the DeepSpeed launcher on `ranks` CPU ranks, as `mvgpt train` does."""
    cmd = launcher_command(trainer_args(checkpoint, annotation, out, *extra), num_gpus=ranks, master_port=free_port())
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def train_on_two_nodes(checkpoint: Path, annotation: Path, out: Path, audit: Path, *extra: str) -> None:
    """Two torchrun launches on this machine, `--nnodes 2 --node_rank 0|1`, one CPU rank each, meeting on
    127.0.0.1 (as two machines sharing a file system would); each rank records its file operations in `audit`."""
    port = str(free_port())
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "AUDIT_DIR": str(audit)}
    nodes = [
        subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(node),
             "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", port,
             "-m", "tests.audited_rank", *trainer_args(checkpoint, annotation, out, *extra)],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for node in (0, 1)
    ]
    logs = [node.communicate(timeout=600)[0] for node in nodes]
    for node, log in zip(nodes, logs, strict=True):
        assert node.returncode == 0, log[-4000:]


def losses(run_dir: Path) -> list[float]:
    state = json.loads((run_dir / "checkpoint-final" / "trainer_state.json").read_text())
    return [entry["loss"] for entry in state["log_history"] if "loss" in entry]


@pytest.mark.slow
def test_zero3_two_ranks_on_one_node_and_on_two_nodes(fast_checkpoint, repeated_batch, tmp_path):
    """LoRA and projectors train under ZeRO-3 on two CPU ranks; two nodes give the same losses, only global rank 0
    writes shared files, each checkpoint is marked complete once after both ranks saved, and --resume continues."""
    out = tmp_path / "run"
    result = train(2, fast_checkpoint, repeated_batch, out, "--max_steps", "6", "--save_steps", "3")
    assert result.returncode == 0 and json.loads((out / "hyperparameters.json").read_text())["world_size"] == 2

    loss = losses(out)
    assert len(loss) == 6
    assert sum(loss[-2:]) / 2 < sum(loss[:2]) / 2 - 0.05, loss

    run_id = read_run_id(out)
    for name in ("checkpoint-3", "checkpoint-6", "checkpoint-final"):
        ckpt = out / name
        assert read_marker(ckpt)["run_id"] == run_id and checkpoint_problems(ckpt) == []
        for f in ("adapter_model.safetensors", "adapter_config.json", NON_LORA_WEIGHTS, "config.json", "tokenizer.json"):
            assert (ckpt / f).is_file(), f"{name}/{f}"
    assert (out / "checkpoint-3" / "global_step3").is_dir()
    assert not (out / STAGING_DIR).exists()
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

    # The same run on two nodes, stopped after checkpoint-3, then resumed there to step 6.
    nodes, audit = tmp_path / "two_nodes", tmp_path / "audit"
    audit.mkdir()
    train_on_two_nodes(fast_checkpoint, repeated_batch, nodes, audit, "--max_steps", "3", "--save_steps", "3")
    train_on_two_nodes(fast_checkpoint, repeated_batch, nodes, audit, "--max_steps", "6", "--save_steps", "3",
                       "--resume", "True")
    assert losses(nodes) == pytest.approx(loss, rel=1e-5)
    for name in ("checkpoint-3", "checkpoint-6", "checkpoint-final"):
        marker = read_marker(nodes / name)
        assert marker["run_id"] == read_run_id(nodes) and checkpoint_problems(nodes / name) == []
    shards = set(read_marker(nodes / "checkpoint-6")["files"])
    assert {f"global_step6/zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in (0, 1)} <= shards
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= shards

    # Global rank 1 only made its part of each staged checkpoint; rank 0 wrote every shared file and published.
    own_part = re.compile(r"\.saving(/checkpoint-\d+(/global_step\d+(/zero_pp_rank_1_\w+\.pt)?|/rng_state_1\.pth)?)?")
    rank1 = [line.split("\t") for line in (audit / "rank1.tsv").read_text().splitlines()]
    assert rank1 and all(event in ("open", "os.mkdir") and own_part.fullmatch(path) for event, path in rank1), rank1
    rank0 = (audit / "rank0.tsv").read_text().splitlines()
    for shared in ("run.json", "hyperparameters.json", "loss_curve.png"):
        assert any(line.endswith(f"\t{shared}") for line in rank0), shared
    for name in ("checkpoint-3", "checkpoint-6", "checkpoint-final"):
        renames = [line for line in rank0 if line == f"os.rename\t.saving/{name}/{COMPLETE_MARKER}"]
        assert len(renames) == (2 if name == "checkpoint-final" else 1), name  # final: once per launch
        assert f"os.rename\t{name}" in rank0


class Planted:
    """Unpickling it runs a shell command (here: creates a file) — what a planted checkpoint file could do."""

    def __init__(self, proof: Path):
        self.proof = proof

    def __reduce__(self):
        return os.system, (f"touch {self.proof}",)


@pytest.mark.slow
def test_resume_falls_back_past_a_damaged_checkpoint_matches_an_uninterrupted_run_and_runs_no_planted_code(
    fast_checkpoint, repeated_batch, tmp_path
):
    args = ("--max_steps", "4", "--save_steps", "2")
    whole = tmp_path / "whole"
    train(1, fast_checkpoint, repeated_batch, whole, *args)
    # Every file of the newest checkpoint cut short in turn: resume takes the previous checkpoint and names the file;
    # inference takes the newest checkpoint whose weights are intact, or names the cut weight file.
    faults = tmp_path / "faults"
    faults.mkdir()
    for name in ("run.json", "checkpoint-2", "checkpoint-4"):
        (shutil.copytree if name.startswith("checkpoint") else shutil.copy)(whole / name, faults / name)
    newest = faults / "checkpoint-4"
    for relpath in read_marker(newest)["files"]:
        path = newest / relpath
        intact = path.read_bytes()
        path.write_bytes(intact[: len(intact) // 2])
        checkpoint, passed_over = resume_checkpoint(faults)
        assert checkpoint == faults / "checkpoint-2" and len(passed_over) == 1 and str(path) in passed_over[0], relpath
        source = resolve_model_path(faults)
        if relpath in INFERENCE_FILES:
            assert source.checkpoint == faults / "checkpoint-2" and str(path) in source.note, relpath
        else:
            assert source.checkpoint == newest, relpath
        path.write_bytes(intact)

    # A run that stopped after step 4 while its newest checkpoint's optimizer file was cut short on disk.
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    for name in ("run.json", "checkpoint-2", "checkpoint-4"):
        (shutil.copytree if name.startswith("checkpoint") else shutil.copy)(whole / name, resumed / name)
    optimizer = resumed / "checkpoint-4" / "global_step4" / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    optimizer.write_bytes(optimizer.read_bytes()[:100])
    result = train(1, fast_checkpoint, repeated_batch, resumed, *args, "--resume", "True")
    log = result.stdout + result.stderr
    assert f"checkpoint-4 is unusable: {optimizer} is damaged (100 bytes" in log
    assert f"resuming from {resumed / 'checkpoint-2'} instead" in log

    for f in ("adapter_model.safetensors", NON_LORA_WEIGHTS):
        a = load_file(whole / "checkpoint-4" / f)
        b = load_file(resumed / "checkpoint-4" / f)
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=k)
    assert losses(resumed)[-2:] == pytest.approx(losses(whole)[-2:], rel=1e-5)
    assert checkpoint_problems(resumed / "checkpoint-4") == []  # the damaged one was replaced whole

    # A checkpoint whose optimizer file is a planted pickle (its marker rewritten to match): resume refuses to
    # unpickle it, names the file, and the code never runs.
    planted = tmp_path / "planted"
    planted.mkdir()
    shutil.copy(whole / "run.json", planted / "run.json")
    shutil.copytree(whole / "checkpoint-2", planted / "checkpoint-2")
    proof = tmp_path / "code-ran"
    bad = planted / "checkpoint-2" / "global_step2" / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    torch.save({"optimizer_state_dict": Planted(proof)}, bad)
    mark_complete(planted / "checkpoint-2", 2, read_run_id(planted))
    result = train(1, fast_checkpoint, repeated_batch, planted, *args, "--resume", "True", check=False)
    assert result.returncode != 0 and not proof.exists()
    errors = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {bad}: ") and "posix.system" in errors[0], errors


def test_deepspeed_loads_checkpoint_files_with_weights_only_inside_training(tmp_path):
    """The mechanism behind the planted-pickle case, in-process: DeepSpeed's own loader runs the pickle's code
    (the reproduction), and inside `weights_only_unpickling` it refuses it and the file is named."""
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    from mobilevideogpt.train.safe_loading import refused_pickles, weights_only_unpickling

    proof = tmp_path / "code-ran"
    planted = tmp_path / "checkpoint" / "global_step1" / "optim_states.pt"
    planted.parent.mkdir(parents=True)
    torch.save({"optimizer_state_dict": Planted(proof)}, planted)
    TorchCheckpointEngine().load(str(planted), map_location="cpu")
    assert proof.exists(), "DeepSpeed unpickles whatever the file holds"
    proof.unlink()
    with weights_only_unpickling(), pytest.raises(pickle.UnpicklingError, match="posix.system"):
        TorchCheckpointEngine().load(str(planted), map_location="cpu")
    assert not proof.exists()
    assert refused_pickles(planted.parents[1]) == [f"{planted}: Trying to load unsupported GLOBAL posix.system "
                                                   "whose module posix is blocked."]
    assert os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD") is None  # restored afterwards

    # What DeepSpeed's ZeRO optimizer states hold besides tensors still loads: the stage and either loss scaler
    # (fp32/bf16 runs keep the static one, fp16 runs the dynamic one).
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum

    for scaler in (LossScaler(scale=1.0), DynamicLossScaler(init_scale=2**16, scale_window=1000, min_scale=1,
                                                            delayed_shift=2, consecutive_hysteresis=False,
                                                            raise_error_at_min_scale=True, dtype=torch.float16)):
        state = tmp_path / "state.pt"
        torch.save({"loss_scaler": scaler, "zero_stage": ZeroStageEnum.weights, "partition_count": [1]}, state)
        with weights_only_unpickling():
            loaded = TorchCheckpointEngine().load(str(state), map_location="cpu")
        assert vars(loaded["loss_scaler"]) == vars(scaler) and loaded["zero_stage"] == ZeroStageEnum.weights


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


def test_backward_stays_out_of_the_frozen_towers_under_lora_and_checkpointing(tmp_path):
    """PEFT and activation checkpointing ask the model to make its inputs require grad; only the token embeddings
    do, so the frozen CLIP and VideoMamba towers keep nothing for backward, while LoRA and the projectors train."""
    from mobilevideogpt.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
    from mobilevideogpt.model.tiny import save_tiny_checkpoint, fast_geometry
    from mobilevideogpt.train.arguments import ModelArguments, TrainingArguments
    from mobilevideogpt.train.model_setup import load_model_for_training

    base = save_tiny_checkpoint(tmp_path / "base", seed=0, **fast_geometry())
    args = TrainingArguments(output_dir=str(tmp_path / "run"), use_cpu=True, report_to="none", lora_r=4, lora_alpha=8)
    model = load_model_for_training(ModelArguments(model_name_or_path=str(base)), args)
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    towers = model.get_base_model().model
    tower_outputs = []
    for tower in (towers.image_vision_tower, towers.vision_tower):
        tower.register_forward_hook(lambda module, inputs, output: tower_outputs.append(output))
    ids = torch.tensor([[5, 6, IMAGE_TOKEN_INDEX, 7, 8, 9, 10]])
    labels = torch.where(ids == IMAGE_TOKEN_INDEX, IGNORE_INDEX, ids)
    images, context = (torch.randn(1, 4, 3, 112, 112) for _ in range(2))
    model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels, images=images,
          context_images=context).loss.backward()  # fmt: skip
    flat = [t for out in tower_outputs for t in (out if isinstance(out, (tuple, list)) else [out]) if torch.is_tensor(t)]
    assert len(flat) >= 2 and not any(t.requires_grad for t in flat)
    trained = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert any("lora_" in n for n in trained) and any("mm_projector" in n for n in trained)
    assert all(p.grad is None for n, p in model.named_parameters() if "vision_tower" in n)


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


def test_a_batch_larger_than_the_dataset_is_refused_and_the_effective_batch_is_the_real_one(tmp_path, caplog):
    from mobilevideogpt.train.arguments import TrainingArguments
    from mobilevideogpt.train.finetune import check_batch_size

    def args(batch: int, gacc: int) -> TrainingArguments:
        return TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none",
                                 per_device_train_batch_size=batch, gradient_accumulation_steps=gacc)

    with pytest.raises(ValueError, match=r"batch .*16.*BATCH.* larger than the 8 training samples.*at most 8"):
        check_batch_size(args(16, 1), 8)
    assert check_batch_size(args(2, 2), 8) == 4
    with caplog.at_level("WARNING"):
        assert check_batch_size(args(4, 4), 8) == 8
    assert "exceeds the 8 training samples" in caplog.text and "GACC" in caplog.text
