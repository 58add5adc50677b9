"""`mvgpt infer` / `python inference.py`: the guide's command, JSON output, streaming, one-line errors."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from mobilevideogpt.checkpoints import COMPLETE_MARKER, FINAL_CHECKPOINT
from mobilevideogpt.cli import run_command
from tests.cli_helpers import assert_one_line_error

REPO = Path(__file__).resolve().parents[1]
GUIDE_VIDEO = Path("squats/00093026.mp4")
GUIDE_PROMPT = "Analyze this squats video and provide corrective feedback."

def copy_checkpoint(run: Path, tmp_path: Path) -> Path:
    target = tmp_path / "run" / FINAL_CHECKPOINT
    shutil.copytree(run / FINAL_CHECKPOINT, target)
    return target


def run_cli(capsys, *args) -> tuple[int, str, str]:
    code = run_command("infer", [str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_on_base_checkpoint_json(capsys, mvgpt_tiny_checkpoint, sample_dataset_dir):
    code, out, err = run_cli(
        capsys,
        "--model_path", mvgpt_tiny_checkpoint,
        "--video_path", sample_dataset_dir / "tricep_stretch/00002012.mp4",
        "--max_new_tokens", 3,
        "--json",
    )  # fmt: skip
    assert code == 0, err
    payload = json.loads(out)
    assert set(payload) >= {
        "model", "video_path", "prompt", "text", "num_new_tokens", "finish_reason", "frame_indices", "timings",
        "generation",
    }  # fmt: skip
    assert payload["model"]["checkpoint"] is None and payload["model"]["dtype"] == "float32"
    assert payload["prompt"] == "Analyze this tricep stretch video and provide corrective feedback."
    assert len(payload["frame_indices"]) == 16  # the published geometry
    assert 1 <= payload["num_new_tokens"] <= 3
    timings = payload["timings"]
    for key in ("video_decode_s", "encode_s", "prefill_s", "decode_s", "total_s", "time_to_first_token_s"):
        assert isinstance(timings[key], float) and timings[key] >= 0
    assert timings["video_decode_s"] > 0


def test_cli_streams_trained_checkpoint(capsys, mvgpt_trained_run, sample_dataset_dir):
    code, out, err = run_cli(
        capsys,
        "--model_path", mvgpt_trained_run,
        "--video_path", sample_dataset_dir / GUIDE_VIDEO,
        "--prompt", "What is wrong?",
        "--max_new_tokens", 4,
    )  # fmt: skip
    assert code == 0, err
    assert out.endswith("\n") and out.strip()
    assert "using checkpoint-final" in err and "Prompt: What is wrong?" in err and "tok/s" in err

    code, quiet_out, _ = run_cli(
        capsys,
        "--model_path", mvgpt_trained_run / FINAL_CHECKPOINT,
        "--video_path", sample_dataset_dir / GUIDE_VIDEO,
        "--prompt", "What is wrong?",
        "--max_new_tokens", 4,
        "--no-stream",
    )  # fmt: skip
    assert code == 0 and quiet_out == out  # greedy: the same answer, printed at the end


def test_cli_bad_inputs_are_one_line_errors(capsys, mvgpt_trained_run, sample_dataset_dir, tmp_path, monkeypatch):
    video = sample_dataset_dir / GUIDE_VIDEO
    code, out, err = run_cli(capsys, "--model_path", mvgpt_trained_run, "--video_path", tmp_path / "missing.mp4")
    assert_one_line_error(code, err, "missing.mp4", "file not found", "--video_path")
    assert out == ""

    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(2048))
    code, _, err = run_cli(capsys, "--model_path", mvgpt_trained_run, "--video_path", corrupt)
    assert_one_line_error(code, err, "corrupt.mp4", "--video_path")

    checkpoint = copy_checkpoint(mvgpt_trained_run, tmp_path)
    (checkpoint / COMPLETE_MARKER).unlink()
    code, _, err = run_cli(capsys, "--model_path", checkpoint, "--video_path", video)
    assert_one_line_error(code, err, "incomplete", "COMPLETE")

    code, _, err = run_cli(capsys, "--model_path", "results/nope/checkpoint-final", "--video_path", video)
    assert_one_line_error(code, err, "does not exist")
    # `results/nope` has the shape of a hub id, but results/ is a local folder: it is reported as a missing folder.
    (tmp_path / "results").mkdir()
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, "--model_path", "results/nope", "--video_path", video)
    assert_one_line_error(code, err, "results/nope does not exist: no such folder")

    code, _, err = run_cli(capsys, "--model_path", mvgpt_trained_run, "--video_path", video, "--prompt", " ")
    assert_one_line_error(code, err, "--prompt is empty")


def test_guide_command_and_offline_base(mvgpt_trained_run, sample_dataset_dir, tmp_path):
    """The guide's command, verbatim, from a project folder laid out as the guide says."""
    project = tmp_path / "project"
    (project / "dataset/squats").mkdir(parents=True)
    shutil.copy(sample_dataset_dir / GUIDE_VIDEO, project / "dataset" / GUIDE_VIDEO)
    shutil.copytree(
        mvgpt_trained_run / FINAL_CHECKPOINT, project / "results/qved_finetune_mobilevideogpt_0.5B/checkpoint-final"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [
        sys.executable, str(REPO / "inference.py"),
        "--model_path", "results/qved_finetune_mobilevideogpt_0.5B/checkpoint-final",
        "--video_path", "dataset/squats/00093026.mp4",
        "--prompt", GUIDE_PROMPT,
        "--max_new_tokens", "4",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() and f"Prompt: {GUIDE_PROMPT}" in done.stderr

    # A base that is neither local nor downloadable: one line naming the way out.
    offline = command[:2] + ["--model_path", "nobody/not-a-cached-model", "--video_path", "dataset/squats/00093026.mp4"]
    done = subprocess.run(offline, cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert done.stderr.count("error: ") == 1 and "Traceback" not in done.stderr
    assert "huggingface-cli download nobody/not-a-cached-model" in done.stderr


def test_mvgpt_infer_is_the_same_command(capsys, mvgpt_trained_run, sample_dataset_dir):
    from mobilevideogpt.cli import main

    args = ["--model_path", str(mvgpt_trained_run), "--video_path", str(sample_dataset_dir / GUIDE_VIDEO),
            "--max_new_tokens", "3", "--json"]  # fmt: skip
    assert main(["infer", *args]) == 0
    via_mvgpt = json.loads(capsys.readouterr().out)
    assert run_command("infer", args) == 0
    via_script = json.loads(capsys.readouterr().out)
    assert via_mvgpt["text"] == via_script["text"] and via_mvgpt["prompt"] == GUIDE_PROMPT


def test_a_whitespace_only_answer_is_said_in_one_line(capsys, monkeypatch, mvgpt_fast_checkpoint, sample_dataset_dir):
    from transformers import AutoTokenizer

    from mobilevideogpt.chat import VideoChat

    space = AutoTokenizer.from_pretrained(mvgpt_fast_checkpoint).encode(" ", add_special_tokens=False)[0]
    load = VideoChat.from_pretrained

    def spaces_only(*args, **kwargs):
        chat = load(*args, **kwargs)
        chat.model.lm_head.register_forward_hook(lambda module, inputs, output: output.index_add_(
            -1, torch.tensor([space]), torch.full((*output.shape[:-1], 1), 1e4)))
        return chat

    monkeypatch.setattr(VideoChat, "from_pretrained", spaces_only)
    code, out, err = run_cli(capsys, "--model_path", mvgpt_fast_checkpoint, "--video_path",
                             sample_dataset_dir / GUIDE_VIDEO, "--max_new_tokens", 3)  # fmt: skip
    assert code == 0 and out.strip() == ""
    assert err.count("whitespace only") == 1


def test_interactive_follow_ups_use_the_cached_video(capsys, monkeypatch, mvgpt_trained_run, sample_dataset_dir):
    common = ["--model_path", mvgpt_trained_run, "--video_path", sample_dataset_dir / GUIDE_VIDEO,
              "--prompt", "What is wrong?", "--max_new_tokens", 3, "--interactive"]  # fmt: skip
    monkeypatch.setattr("sys.stdin", io.StringIO("Which knee moves first?\n\nnever asked\n"))
    code, out, err = run_cli(capsys, *common)
    assert code == 0, err
    assert err.count("question> ") == 2  # after each answer; the empty line ended the session
    assert "Prompt: What is wrong?" in err and "Prompt: Which knee moves first?" in err and "never asked" not in err
    summaries = [line for line in err.splitlines() if line.startswith("[")]
    assert len(summaries) == 2
    assert "from the video's cache" not in summaries[0] and "prompt tokens from the video's cache" in summaries[1]
    assert len(out.strip().splitlines()) == 2  # two streamed answers

    monkeypatch.setattr("sys.stdin", io.StringIO("Which knee moves first?"))  # then end of input
    code, out, err = run_cli(capsys, *common, "--json")
    assert code == 0, err
    first, second = (json.loads(line) for line in out.strip().splitlines())
    assert first["timings"]["cached_tokens"] == 0 and second["timings"]["cached_tokens"] > 0
    assert second["prompt"] == "Which knee moves first?" and second["timings"]["video_decode_s"] == 0
    assert first["model"]["plan"]["llm_dtype"] == "float32"
