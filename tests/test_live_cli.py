"""`mvgpt live` and `mvgpt eval --live`, run in-process as the `mvgpt` front-end runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import pytest
import torch

from mobilevideogpt.cli import run_command
from mobilevideogpt.live.events import EventLog, FeedbackEvent
from mobilevideogpt.live.labels import load_labels
from mobilevideogpt.qved.sessions import make_sessions
from mobilevideogpt.runtime import plan_inference
from tests.test_live_session import frame_count, parse_srt


def mvgpt(command: str, *argv) -> int:
    return run_command(command, [str(a) for a in argv])


@pytest.fixture(scope="module")
def sessions_file(tmp_path_factory):
    return make_sessions(tmp_path_factory.mktemp("cli_sessions"), count=2, seed=4, segment_s=(3.0, 4.0), size=(96, 72))


def one_error_line(err: str) -> str:
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


def test_live_writes_events_subtitles_summary_and_a_captioned_copy(mvgpt_fast_checkpoint, sessions_file, tmp_path, capsys):
    video = sessions_file.parent / "session_00.mp4"
    out = tmp_path / "live"
    assert mvgpt("live", "--model_path", mvgpt_fast_checkpoint, "--video_path", video, "--window", 4, "--stride", 2,
                        "--out", out, "--burn-in", "--max_new_tokens", 4, "--device", "cpu") == 0
    captured = capsys.readouterr()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["video"] == str(video.resolve()) and summary["windows_answered"] == int(frame_count(video) / 10 / 2)
    assert summary["real_time_factor"] > 0 and summary["windows_skipped"] == 0
    assert "real-time factor" in captured.err and "window frames reused" in captured.err
    assert f"on {plan_inference('cpu', 'auto').describe()} ..." in captured.err  # the CPU plan, as inference's
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    assert len(parse_srt((out / "feedback.srt").read_text())) == len(events) == summary["events"]
    assert captured.out.count("\n") == len(events)
    assert frame_count(out / "feedback.mp4") == frame_count(video)
    capture = cv2.VideoCapture(str(out / "feedback.mp4"))
    assert (capture.get(cv2.CAP_PROP_FRAME_WIDTH), capture.get(cv2.CAP_PROP_FPS)) == (96, 10)
    capture.release()


def test_a_session_slower_than_real_time_says_what_would_keep_up():
    from types import SimpleNamespace

    from mobilevideogpt.cli.live import _summary_lines
    from mobilevideogpt.live.session import SessionSummary
    from mobilevideogpt.model.tiny import tiny_config

    config = tiny_config()
    slow = SessionSummary("v.mp4", True, 30.0, 8.0, 2.0, windows_answered=4, busy_s=28.0)
    fast = SessionSummary("v.mp4", True, 30.0, 8.0, 2.0, windows_answered=4, busy_s=4.0)

    def chat(quantize, visual_tokens):
        return SimpleNamespace(plan=plan_inference("cpu", "auto", quantize), visual_tokens=visual_tokens,
                               model=SimpleNamespace(config=config))

    full = config.full_visual_tokens_per_video
    try:
        plan_inference("cpu", "auto", "w8a8")
        w8a8_here = True
    except Exception:
        w8a8_here = False
    (line,) = [l for l in _summary_lines(slow, chat(None, full)) if l.startswith("real-time factor")]
    assert line.startswith("real-time factor 3.50 (7.00 s per window, one every 2.00 s): slower than real time")
    assert "a longer --stride" in line and "VISUAL_TOKENS=0.25" in line
    # Suggested where it runs and the default multiplies in fp32; bf16 matrix units beat it.
    fp32_products = plan_inference("cpu", "auto").prefill_dtype == torch.float32
    assert ("--quantize w8a8" in line) == (w8a8_here and fp32_products)
    if w8a8_here:  # already asked for: not suggested again, nor a budget the model already has
        (line,) = [l for l in _summary_lines(slow, chat("w8a8", 600)) if l.startswith("real-time factor")]
        assert "--quantize" not in line and "VISUAL_TOKENS" not in line and "a longer --stride" in line
    (line,) = [l for l in _summary_lines(fast, chat(None, full)) if l.startswith("real-time factor")]
    assert line.endswith("keeps up with a live source")


def test_live_on_a_stream_records_it_and_captions_the_recording(mvgpt_fast_checkpoint, sessions_file, tmp_path, capsys):
    video = sessions_file.parent / "session_01.mp4"
    out = tmp_path / "stream"
    url = video.resolve().as_uri()  # file:///…: OpenCV opens it as a stream, read as fast as it decodes
    assert mvgpt("live", "--model_path", mvgpt_fast_checkpoint, "--video_path", url, "--window", 4, "--stride", 2,
                        "--out", out, "--burn-in", "--max_new_tokens", 2, "--device", "cpu") == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["live"] and summary["video"] == url
    complete = int(frame_count(video) / 10 // 2)
    assert summary["windows_answered"] + summary["windows_skipped"] == complete and summary["windows_answered"] >= 1
    assert frame_count(out / "capture.mp4") == frame_count(out / "feedback.mp4") == frame_count(video)
    assert "skipped" in capsys.readouterr().err or summary["windows_skipped"] == 0


def test_live_refuses_bad_input_in_one_line_before_loading_the_model(tmp_path, capsys):
    assert mvgpt("live", "--model_path", tmp_path / "no-model", "--video_path", tmp_path / "missing.mp4") == 1
    assert "missing.mp4" in one_error_line(capsys.readouterr().err)
    assert mvgpt("live", "--model_path", tmp_path / "no-model", "--video_path", "0", "--realtime") == 1
    assert "--realtime" in one_error_line(capsys.readouterr().err)


def _write_events(path, video, feedback, delay=1.0):
    with EventLog(path) as log:
        for number, item in enumerate(feedback):
            log.write(FeedbackEvent(item.time + delay, item.time + delay - 4, item.time + delay, item.text, number, None, 0.1, video))


def test_eval_live_scores_each_session_and_pools(sessions_file, tmp_path, capsys):
    first, second = load_labels(sessions_file)
    _write_events(tmp_path / "a" / "events.jsonl", str(first.video.resolve()), first.feedback)
    _write_events(tmp_path / "b" / "events.jsonl", str(second.video.resolve()), second.feedback[-1:], delay=5.0)
    assert mvgpt("eval", "--live", "--predictions", tmp_path / "a", tmp_path / "b" / "events.jsonl",
                             "--references", sessions_file, "--output_dir", tmp_path / "report") == 0
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "report" / "live_report.json").read_text())
    by_session = {row["session"]: row for row in report["sessions"]}
    assert by_session[first.key]["t_f_score"] == 1.0 and by_session[first.key]["rouge_l"] == 1.0
    assert by_session[second.key]["matched"] == 0  # 5 s after the last reference: nothing within 3 s
    pooled = report["pooled"]
    assert (pooled["predictions"], pooled["references"]) == (len(first.feedback) + 1, len(first.feedback) + len(second.feedback))
    assert pooled["matched"] == len(first.feedback)
    assert "T-F-Score" in out and (tmp_path / "report" / "live_report.md").read_text() == out


def test_eval_live_refuses_predictions_it_cannot_pair(sessions_file, tmp_path, capsys):
    first, _ = load_labels(sessions_file)
    _write_events(tmp_path / "events.jsonl", "/elsewhere/other.mp4", first.feedback)
    assert mvgpt("eval", "--live", "--predictions", tmp_path, tmp_path / "events.jsonl", "--references", sessions_file) == 1
    assert "other.mp4" in one_error_line(capsys.readouterr().err)


def test_convert_windows_and_the_inference_alias(sessions_file, tmp_path, capsys):
    out = tmp_path / "dataset"
    assert mvgpt("convert", "--windows", "--labels", sessions_file, "--output-dir", out) == 0
    records = json.loads((out / "qved_windows_train.json").read_text())
    assert records and all(r["conversations"][0]["value"].startswith("Analyze this exercise video") for r in records)
    assert "window samples" in capsys.readouterr().out
    assert mvgpt("convert", "--windows") == 2 and "--labels" in capsys.readouterr().err
    repo = Path(__file__).resolve().parents[1]
    alias = subprocess.run([sys.executable, "inference.py", "--live", "--help"], cwd=repo, capture_output=True, text=True)
    assert alias.returncode == 0 and alias.stdout.startswith("usage: inference.py --live") and "--stride" in alias.stdout


def test_sample_data_writes_sessions_and_never_replaces_other_files(tmp_path, capsys):
    out = tmp_path / "sessions"
    assert mvgpt("sample-data", "--sessions", 2, "--seed", 3, "--out", out) == 0
    sessions = load_labels(out / "sessions.json")
    assert [s.video.name for s in sessions] == ["session_00.mp4", "session_01.mp4"]
    assert all(len(s.feedback) == 3 and s.feedback[0].time == 0 for s in sessions)
    assert str(out / "sessions.json") in capsys.readouterr().out
    # Rewritten with fewer sessions: the earlier run's extra video goes, it is listed nowhere any more.
    assert mvgpt("sample-data", "--sessions", 1, "--seed", 4, "--out", out) == 0
    assert len(load_labels(out / "sessions.json")) == 1 and not (out / "session_01.mp4").exists()
    # A session video changed since (a user's own recording) is never replaced, even in the synthetic folder.
    (out / "session_00.mp4").write_bytes(b"my own video")
    assert mvgpt("sample-data", "--sessions", 1, "--out", out) == 1
    assert "session_00.mp4" in one_error_line(capsys.readouterr().err)
    assert (out / "session_00.mp4").read_bytes() == b"my own video"

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "session_00.mp4").write_bytes(b"my own video")
    assert mvgpt("sample-data", "--sessions", 1, "--out", mine) == 1
    assert "--force" in one_error_line(capsys.readouterr().err)
    assert mvgpt("sample-data", "--sessions", 1, "--out", mine, "--force") == 1
    assert "session_00.mp4" in one_error_line(capsys.readouterr().err)
    assert [p.name for p in mine.iterdir()] == ["session_00.mp4"]
    assert (mine / "session_00.mp4").read_bytes() == b"my own video"
    (mine / "notes.txt").write_text("mine")
    (mine / "session_00.mp4").rename(mine / "workout.mp4")
    assert mvgpt("sample-data", "--sessions", 1, "--out", mine, "--force") == 0  # beside the user's files
    assert (mine / "notes.txt").read_text() == "mine" and (mine / "workout.mp4").read_bytes() == b"my own video"
    assert [s.video.name for s in load_labels(mine / "sessions.json")] == ["session_00.mp4"]


def test_sessions_leave_a_sample_dataset_in_the_same_folder_whole(sample_dataset_copy, capsys):
    videos = sorted(sample_dataset_copy.glob("*/*.mp4"))
    assert mvgpt("sample-data", "--sessions", 1, "--out", sample_dataset_copy) == 1
    assert "README.txt" in one_error_line(capsys.readouterr().err)
    assert sorted(sample_dataset_copy.glob("*/*.mp4")) == videos and not (sample_dataset_copy / "sessions.json").exists()
