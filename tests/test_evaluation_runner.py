"""Evaluation runs (`mvgpt eval`): resumable predictions, failures, reports (JSON, Markdown, HTML), comparison."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mobilevideogpt.cli import run_command
from mobilevideogpt.evaluation.predictions import PREDICTIONS_FILE, RUN_CONFIG_FILE
from mobilevideogpt.evaluation.runner import model_label

REPO = Path(__file__).resolve().parents[1]

def test_model_labels():
    assert model_label("results/qved_finetune_mobilevideogpt_0.5B/checkpoint-final") == (
        "qved_finetune_mobilevideogpt_0.5B-checkpoint-final"
    )
    assert model_label("results/qved_finetune_mobilevideogpt_0.5B") == "qved_finetune_mobilevideogpt_0.5B"
    assert model_label("Amshaker/Mobile-VideoGPT-0.5B") == "Mobile-VideoGPT-0.5B"


# ---------------------------------------------------------------- running and reporting

SQUATS = "dataset/squats/00093026.mp4"
TRICEP = "dataset/tricep_stretch/00002012.mp4"
BROKEN = "dataset/squats/broken.mp4"


def record(video: str, exercise: str, answer: str) -> dict:
    return {
        "video": video,
        "conversations": [
            {"from": "human", "value": f"Analyze this {exercise} video and provide corrective feedback."},
            {"from": "gpt", "value": answer},
        ],
        "split": "test",
    }


@pytest.fixture
def project(sample_dataset_dir, tmp_path) -> Path:
    """A project folder with two real sample videos, one corrupt file and a 3-record test split."""
    root = tmp_path / "project"
    for video in (SQUATS, TRICEP):
        (root / video).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(sample_dataset_dir / Path(video).relative_to("dataset"), root / video)
    (root / BROKEN).write_bytes(b"this is not a video")
    split = [
        record(SQUATS, "squats", "squats - Keep your back straight"),
        record(BROKEN, "squats", "squats - Go lower"),
        record(TRICEP, "tricep stretch", "tricep stretch (right arm) - User is holding the stretch"),
    ]
    (root / "dataset/qved_test.json").write_text(json.dumps(split))
    return root


def run_eval(capsys, *args) -> tuple[int, str, str]:
    code = run_command("eval", [str(a) for a in args] + ["--no_progress", "--no_bertscore", "--no_similarity"])
    out, err = capsys.readouterr()
    return code, out, err


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_evaluation_resumes_and_records_failures(capsys, project, mvgpt_fast_checkpoint):
    out_dir = project / "eval"
    args = ["--model_path", mvgpt_fast_checkpoint, "--split", project / "dataset/qved_test.json"]
    args += ["--output_dir", out_dir, "--labels", "tiny", "--max_new_tokens", 3]
    predictions = out_dir / "tiny" / PREDICTIONS_FILE

    code, _, err = run_eval(capsys, *args, "--limit", 2)
    assert code == 0, err
    first = lines(predictions)
    assert [json.loads(x)["status"] for x in first] == ["ok", "failed"]

    code, out, err = run_eval(capsys, *args)
    assert code == 0, err
    assert "1 sample(s) run, 2 already done" in err
    assert lines(predictions)[:2] == first and len(lines(predictions)) == 3

    code, _, err = run_eval(capsys, *args)
    assert "0 sample(s) run, 3 already done" in err and len(lines(predictions)) == 3

    report = json.loads((out_dir / "report.json").read_text())
    summary = report["models"][0]
    assert summary["samples"] == {"total": 3, "ok": 2, "failed": 1, "pending": 0}
    assert summary["failures"][0]["video"] == BROKEN and "broken.mp4" in summary["failures"][0]["error"]
    assert summary["metrics"]["rouge_l"]["n"] == 2 and summary["throughput"]["total_new_tokens"] > 0
    markdown = (out_dir / "report.md").read_text()
    assert "## Failed samples" in markdown and "METEOR (nltk, WordNet" in markdown and "| | tiny |" in markdown
    assert "Exercise identified (exact)" in out  # the table is printed too

    code, _, err = run_eval(capsys, *args[:-1], 4)
    assert code == 1 and "other settings (max_new_tokens: 3 → 4)" in err

    (project / BROKEN).unlink()
    code, _, err = run_eval(capsys, *args, "--retry_failed")
    assert code == 0 and "1 sample(s) run, 2 already done" in err
    assert json.loads(lines(predictions)[-1])["error"].endswith("file not found")


def test_report_metrics_from_known_predictions(capsys, project, mvgpt_fast_checkpoint):
    out_dir = project / "eval"
    split = project / "dataset/qved_test.json"
    samples = json.loads(split.read_text())
    model_dir = out_dir / "known"
    model_dir.mkdir(parents=True)
    (model_dir / RUN_CONFIG_FILE).write_text(json.dumps({"model_path": "hand-written"}))

    def done(index, prediction, tokens, prefill, decode):
        sample = samples[index]
        return {
            "id": f"{index}:{sample['video']}",
            "video": sample["video"],
            "prompt": sample["conversations"][0]["value"],
            "status": "ok",
            "prediction": prediction,
            "finish_reason": "stop",
            "timings": {
                "new_tokens": tokens, "prefill_s": prefill, "decode_s": decode, "total_s": 1 + prefill + decode,
                "encode_s": 0.5, "time_to_first_token_s": 1 + prefill, "decode_tokens_per_s": (tokens - 1) / decode,
            },
        }  # fmt: skip

    known = [
        done(0, "squats - Keep your back straight", 10, 0.5, 1.5),
        {"id": f"1:{BROKEN}", "video": BROKEN, "prompt": samples[1]["conversations"][0]["value"], "status": "failed",
         "error": "cannot decode video"},
        done(2, "tricep stretch (left arm) - Hold it", 6, 0.5, 0.5),
    ]  # fmt: skip
    (model_dir / PREDICTIONS_FILE).write_text("".join(json.dumps(r) + "\n" for r in known))

    code = run_command("eval", [
        "--model_path", str(mvgpt_fast_checkpoint), "--labels", "known", "--split", str(split), "--output_dir",
        str(out_dir), "--report_only", "--no_progress", "--no_bertscore",
    ])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out_dir / "report.json").read_text())["models"][0]
    metrics, throughput = summary["metrics"], summary["throughput"]
    assert metrics["exercise_accuracy_exact"] == {"value": 0.5, "correct": 1, "n": 2}  # "(left arm)" ≠ "(right arm)"
    assert metrics["exercise_accuracy_base"] == {"value": 1.0, "correct": 2, "n": 2}
    # Sample 2: [tricep stretch left arm hold it] vs [tricep stretch right arm user is holding the stretch]:
    # LCS "tricep stretch arm" = 3, P = 3/6, R = 3/9, F = 0.4. Sample 0 is identical: 1.
    assert metrics["rouge_l"]["mean"] == pytest.approx((1 + 0.4) / 2)
    per_sample = {row["id"]: row for row in summary["per_sample"]}
    assert per_sample[f"0:{SQUATS}"]["meteor"] == pytest.approx(1 - 0.5 / 6**3)  # 6 tokens, one chunk
    assert throughput["tokens_per_s"] == pytest.approx(16 / 3.0)
    assert throughput["mean_time_to_first_token_s"] == pytest.approx(1.5)
    assert throughput["mean_decode_tokens_per_s"] == pytest.approx((9 / 1.5 + 5 / 0.5) / 2)
    assert summary["samples"] == {"total": 3, "ok": 2, "failed": 1, "pending": 0}
    similarity = per_sample[f"0:{SQUATS}"]["sentence_similarity"]
    assert similarity == pytest.approx(1.0, abs=1e-5) and per_sample[f"2:{TRICEP}"]["sentence_similarity"] < 1
    assert summary["confusion"]["classes"] == ["squats", "tricep stretch"]
    assert summary["per_class"]["tricep stretch"]["exercise_accuracy"]["value"] == 1.0

    page = (out_dir / "report.html").read_text()
    assert page.count('<img class="plot"') == 2  # confusion matrix + per-class means
    assert page.count('<img class="frame"') == 2  # first frames of the two readable videos; the broken one has none
    assert "Keep your back straight" in page and "(no answer)" in page and "0.127" in page


def test_comparison_mode_and_mvgpt_eval(capsys, project, mvgpt_fast_checkpoint, mvgpt_trained_run):
    out_dir = project / "eval"
    code, out, err = run_eval(
        capsys, "--model_path", mvgpt_fast_checkpoint, "--compare", mvgpt_trained_run, "--labels", "base", "finetuned",
        "--split", project / "dataset/qved_test.json", "--output_dir", out_dir, "--limit", 1, "--max_new_tokens", 2,
    )  # fmt: skip
    assert code == 0, err
    report = json.loads((out_dir / "report.json").read_text())
    assert [m["label"] for m in report["models"]] == ["base", "finetuned"]
    assert report["models"][1]["model"]["checkpoint"].endswith("checkpoint-final")
    assert "First 1 of 3 samples" in report["note"]
    assert "| | base | finetuned |" in (out_dir / "report.md").read_text() and "| | base | finetuned |" in out
    for label in ("base", "finetuned"):
        assert len(lines(out_dir / label / PREDICTIONS_FILE)) == 1

    missing = subprocess.run(
        [sys.executable, "-m", "mobilevideogpt", "eval", "--split", project / "nope.json", "--no_progress"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=300,
    )
    assert missing.returncode == 1 and "nope.json not found" in missing.stderr and "Traceback" not in missing.stderr
