"""`mvgpt train` / `bash scripts/finetune_qved.sh`: the guide's defaults, overrides, help, supervision."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_script(*args: str, **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHON": sys.executable, **env}
    return subprocess.run(["bash", "scripts/finetune_qved.sh", *args], cwd=REPO, env=full_env,
                          capture_output=True, text=True, timeout=120)


def test_script_defaults_are_the_guides_table():
    result = run_script("--dry-run")
    assert result.returncode == 0, result.stderr
    cmd = result.stdout.strip().splitlines()[-1]
    for flag in (
        "--model_name_or_path Amshaker/Mobile-VideoGPT-0.5B", "--num_train_epochs 10", "--learning_rate 1e-4",
        "--mm_projector_lr 2e-5", "--lora_r 64", "--lora_alpha 128", "--per_device_train_batch_size 4",
        "--gradient_accumulation_steps 4", "--model_max_length 2048", "--deepspeed scripts/zero3.json",
        "--save_steps 50", "--output_dir results/qved_finetune_mobilevideogpt_0.5B", "--dataset_use QVED_TRAIN",
    ):
        assert flag in cmd, flag
    assert json.loads((REPO / "scripts" / "zero3.json").read_text())["zero_optimization"]["stage"] == 3


def test_script_overrides_and_help():
    result = run_script("--dry-run", "--", "--max_steps", "3", BATCH="1", GACC="16", MAXLEN="1024", EPOCHS="2")
    cmd = result.stdout.strip().splitlines()[-1]
    for flag in ("--per_device_train_batch_size 1", "--gradient_accumulation_steps 16", "--model_max_length 1024",
                 "--num_train_epochs 2", "--max_steps 3"):
        assert flag in cmd, flag
    rank_args = run_script("--rank-args", "--", "--max_steps", "3", BATCH="1").stdout.strip()
    assert len(rank_args.splitlines()) == 1 and rank_args.startswith("--deepspeed scripts/zero3.json")
    assert "--per_device_train_batch_size 1" in rank_args and rank_args.endswith("--max_steps 3")
    help_text = run_script("--help").stdout
    for name in ("BATCH", "GACC", "MAXLEN", "--demo", "--resume", "HOSTFILE"):
        assert name in help_text
    bad = run_script("--bogus")
    assert bad.returncode == 2 and "unrecognized arguments: --bogus" in bad.stderr


def test_a_second_run_into_the_same_folder_is_refused_before_launching(capsys, tmp_path, monkeypatch):
    from mobilevideogpt.cli import run_command
    from mobilevideogpt.train import launch
    from mobilevideogpt.train.run_folder import claim_run_folder
    from tests.cli_helpers import assert_one_line_error
    from tests.test_run_folder import read_only_folder

    def no_launch(command, env=None):
        raise AssertionError("the launcher must not start")

    monkeypatch.setattr(launch, "supervise", no_launch)
    run = tmp_path / "run"
    run_id = claim_run_folder(run, resume=False, overwrite=False)
    (run / "checkpoint-8").mkdir()
    args = ["--output-dir", str(run), "--ds-config", str(REPO / "scripts" / "zero3.json")]
    code = run_command("train", args)
    assert_one_line_error(code, capsys.readouterr().err, f"already holds run {run_id}", "--resume", "--overwrite")
    code = run_command("train", [*args, "--resume", "--overwrite"])
    assert_one_line_error(code, capsys.readouterr().err, "pass only one")
    with read_only_folder(tmp_path / "ro") as folder:
        code = run_command("train", ["--output-dir", str(folder / "run"), "--ds-config", args[-1]])
        assert_one_line_error(code, capsys.readouterr().err, "not writable")
    assert "--overwrite" in run_script("--help").stdout


def test_the_launcher_logs_errors_only_unless_verbose():
    quiet = run_script("--dry-run").stdout.strip().splitlines()[-1]
    assert "--log_level error" in quiet and "--activation_checkpointing" in quiet and "--gradient_checkpointing" not in quiet
    assert "--log_level info" in run_script("--dry-run", "-v").stdout.strip().splitlines()[-1]


def test_cpu_ranks_are_told_their_accelerator_and_threads_and_a_users_setting_wins():
    from mobilevideogpt.train.launch import VERBOSE_ENV, rank_environment

    cpu = rank_environment({}, on_gpu=False, ranks_per_node=os.cpu_count() or 1, verbose=False)
    assert cpu["DS_ACCELERATOR"] == "cpu" and cpu["OMP_NUM_THREADS"] == "1" and VERBOSE_ENV not in cpu
    mine = rank_environment({"OMP_NUM_THREADS": "7"}, on_gpu=False, ranks_per_node=1, verbose=True)
    assert mine["OMP_NUM_THREADS"] == "7" and mine[VERBOSE_ENV] == "1"
    assert "DS_ACCELERATOR" not in rank_environment({}, on_gpu=True, ranks_per_node=2, verbose=False)


def test_the_recipe_printout_estimates_the_memory_of_a_rank_and_says_what_to_change(sample_dataset_dir, monkeypatch):
    from mobilevideogpt.cli import train_memory
    from mobilevideogpt.qved.recipe import resolve_settings
    from mobilevideogpt.train.memory import GIB

    values = resolve_settings({}, {"DATASET": str(sample_dataset_dir / "qved_train.json")})
    monkeypatch.setattr(train_memory, "_device_memory", lambda gpus: ("NVIDIA GeForce RTX 4070 Laptop GPU", 8 * GIB))
    lines = train_memory.memory_report(values, gpus=1, precision="bf16", ranks=1)
    assert lines[0].startswith("  memory per rank   ~") and "logits" in lines[0] and "activations" in lines[0]
    assert "its longest sample:" in lines[1]  # read from the data, not MAXLEN
    roomy = train_memory.memory_report({**values, "BATCH": "1"}, gpus=1, precision="bf16", ranks=1)
    assert not [line for line in roomy if line.startswith("warning:")], roomy

    tight = train_memory.memory_report({**values, "BATCH": "64", "GRAD_CKPT": "False"}, gpus=1, precision="bf16", ranks=1)
    warning = tight[-1]
    assert warning.startswith("warning:") and "exceeds the 8.0 GiB of NVIDIA GeForce RTX 4070" in warning, tight
    assert "GRAD_CKPT=True" in warning and "BATCH=" in warning
    unknown = train_memory.memory_report({**values, "MODEL": "someone/not-here"}, gpus=1, precision="bf16", ranks=1)
    assert unknown == ["  memory per rank   unknown: no configuration of someone/not-here on this machine"]
