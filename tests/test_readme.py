"""README.md is a promise: its set-up commands are what CI runs, its scripts exist, its quick start works."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def code_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", README, flags=re.S)


def test_two_setup_commands_are_what_ci_runs():
    first = [line.split("#")[0].strip() for line in code_blocks()[0].splitlines() if line.strip()]
    assert first == ["bash scripts/setup.sh", "pytest"]
    ci = [line for line in (REPO / ".ci" / "run").read_text().splitlines() if line and not line.startswith(("#", "set ", "cd "))]
    assert ci == ["bash scripts/setup.sh", "python3 -m pytest -q"]
    setup = (REPO / "scripts" / "setup.sh").read_text()
    assert 'pip install -q -e ".[dev]"' in setup and "wordnet-base" in setup


def test_every_script_and_command_the_readme_names_exists():
    named = set(re.findall(r"(?:python|bash) ((?:scripts|utils|benchmarks)/[^\s`]+|inference\.py)", README))
    assert {"scripts/finetune_qved.sh", "scripts/verify_qved_setup.sh", "utils/qved_from_fine_labels.py",
            "inference.py"} <= named
    missing = sorted(path for path in named if not (REPO / path).is_file())
    assert not missing, missing
    from mobilevideogpt.cli import COMMANDS

    commands = set(re.findall(r"`mvgpt ([a-z][a-z-]*)", README))
    assert commands == set(COMMANDS), commands ^ set(COMMANDS)


def test_the_main_job_follows_the_setup():
    assert code_blocks()[1].strip() == "mvgpt demo"


def test_layout_names_what_is_there():
    layout = README.split("## Layout", 1)[1]
    for name in re.findall(r"^  ([a-z_]+(?:/|\.py))", layout, flags=re.M):
        assert (REPO / "mobilevideogpt" / name.rstrip("/")).exists(), name


def test_quick_start_trains_and_the_result_answers(tmp_path):
    """`bash scripts/finetune_qved.sh --demo` (= `mvgpt demo`, shortened to 2 steps), then inference on its output."""
    env = {**os.environ, "PYTHON": sys.executable, "DEMO_DIR": str(tmp_path / "demo"),
           "MASTER_PORT": str(29700 + os.getpid() % 200), "TOKENIZERS_PARALLELISM": "false"}
    train = subprocess.run(["bash", "scripts/finetune_qved.sh", "--demo", "--", "--max_steps", "2"],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert train.returncode == 0, train.stdout[-2000:] + train.stderr[-3000:]
    run = tmp_path / "demo" / "qved_finetune_tiny"
    assert (run / "checkpoint-final" / "COMPLETE").is_file()
    assert (run / "loss_curve.png").is_file() and (run / "hyperparameters.json").is_file()

    video = tmp_path / "demo" / "dataset" / "squats" / "00093026.mp4"
    answer = subprocess.run(
        [sys.executable, "inference.py", "--model_path", str(run), "--video_path", str(video), "--json",
         "--max_new_tokens", "4"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert answer.returncode == 0, answer.stderr[-2000:]
    result = json.loads(answer.stdout)
    assert result["num_new_tokens"] >= 1 and result["model"]["checkpoint"].endswith("checkpoint-final")
    assert result["prompt"] == "Analyze this squats video and provide corrective feedback."
