"""README.md is a promise: its set-up commands are what CI runs, its scripts exist, its quick start works."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

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


@pytest.mark.slow
def test_quick_start_learns_to_name_the_exercise(demo_run):
    """The README's main job, `mvgpt demo`, as a new user runs it: it trains, and the finetuned tiny model names
    the exercise of held-out videos it never saw, asked a question that names none; the base model does not.
    This is the pipeline's end-to-end learning test: every stage must carry the signal."""
    demo, stdout, env = demo_run
    assert "Before / after finetuning" in stdout and "exercise named right" in stdout
    assert "report.html" in stdout and "One answer:" in stdout

    report = json.loads((demo / "eval_heldout" / "report.json").read_text())
    accuracy = {m["label"]: m["metrics"]["exercise_accuracy_base"] for m in report["models"]}
    assert accuracy["finetuned"]["n"] == 36 and accuracy["finetuned"]["value"] >= 0.8, accuracy
    assert accuracy["base"]["value"] < 0.8, accuracy
    rouge = {m["label"]: m["metrics"]["rouge_l"]["mean"] for m in report["models"]}
    assert rouge["finetuned"] > rouge["base"], rouge
    trained = demo / "qved_finetune_tiny"
    assert (trained / "checkpoint-final" / "COMPLETE").is_file()
    assert (trained / "loss_curve.png").is_file() and (trained / "hyperparameters.json").is_file()

    # The README's next command: the guide's inference on a held-out video, with the prompt naming no exercise.
    video = next((demo / "heldout" / "squat_jump").glob("*.mp4"))
    answer = subprocess.run(
        [sys.executable, "inference.py", "--model_path", str(trained), "--video_path", str(video), "--json",
         "--prompt", "Analyze this exercise video and provide corrective feedback."],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert answer.returncode == 0, answer.stderr[-2000:]
    result = json.loads(answer.stdout)
    assert result["finish_reason"] == "stop" and result["text"].strip()
    assert result["model"]["checkpoint"].endswith("checkpoint-final")


# Third-party lines a newcomer once saw on the demo's first screen; their causes are fixed or, where benign, hidden
# (`mvgpt train -v` shows them). One per source.
LIBRARY_NOISE = (
    "Setting accelerator to CPU",  # DeepSpeed, in every process that had to detect the accelerator
    "Unable to find hostfile",  # DeepSpeed's launcher on every single-node run
    "WORLD INFO DICT",  # the launcher's INFO bookkeeping
    "is deprecated and will be removed",  # transformers: gradient_checkpointing arguments and properties
    "OMP_NUM_THREADS/MKL_NUM_THREADS unset",  # accelerate
    "Gradient accumulation steps mismatch",  # accelerate vs DeepSpeed
    "tokenizer has new PAD/BOS/EOS tokens",  # the Trainer filling the config's unset pad token
)


@pytest.mark.slow
def test_quick_start_prints_the_projects_lines_not_library_noise(demo_run):
    _, output, _ = demo_run
    assert "== QVED finetuning: Mobile-VideoGPT ==" in output
    seen = [noise for noise in LIBRARY_NOISE if noise in output]
    assert not seen, seen


@pytest.fixture(scope="module")
def budget_demo_run(tmp_path_factory):
    """The README's demo with a quarter of the visual tokens: `mvgpt demo --visual-tokens 0.25`."""
    from tests.conftest import run_demo

    return run_demo(tmp_path_factory.mktemp("quick_start_budget"), "--visual-tokens", "0.25")


def exercise_accuracy(demo: Path) -> dict[str, dict]:
    report = json.loads((demo / "eval_heldout" / "report.json").read_text())
    return {m["label"]: m["metrics"]["exercise_accuracy_base"] for m in report["models"]}


@pytest.mark.slow
def test_the_demo_trained_on_a_quarter_of_the_visual_tokens_keeps_its_accuracy(demo_run, budget_demo_run):
    """600 of 2402 visual tokens per video in training and evaluation keep ≥ 95 % of the full budget's held-out
    accuracy; the checkpoint records the budget and inference uses it."""
    demo, output, env = budget_demo_run
    assert "visual tokens     0.25" in output
    full, quarter = exercise_accuracy(demo_run[0])["finetuned"], exercise_accuracy(demo)["finetuned"]
    assert quarter["n"] == full["n"] == 36
    assert quarter["value"] >= 0.95 * full["value"], (quarter, full)
    checkpoint = demo / "qved_finetune_tiny" / "checkpoint-final"
    assert json.loads((checkpoint / "config.json").read_text())["visual_token_budget"] == 600

    video = next((demo / "heldout" / "squats").glob("*.mp4"))
    command = [sys.executable, "inference.py", "--model_path", str(checkpoint), "--video_path", str(video), "--json",
               "--prompt", "Analyze this exercise video and provide corrective feedback."]  # fmt: skip
    recorded = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert recorded.returncode == 0, recorded.stderr[-2000:]
    assert json.loads(recorded.stdout)["model"]["visual_tokens"] == 600 and "trained with" not in recorded.stderr
    told = subprocess.run(command + ["--visual-tokens", "all"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert told.returncode == 0, told.stderr[-2000:]
    assert json.loads(told.stdout)["model"]["visual_tokens"] == 2402
    assert "trained with 600 of 2402 visual tokens (25%); running with all 2402" in told.stderr
