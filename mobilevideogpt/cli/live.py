"""`mvgpt live`: timestamped feedback on a recorded workout, a camera or a stream.

    mvgpt live --model_path CKPT --video_path SESSION.mp4              # a file, as fast as the model goes
    mvgpt live --model_path CKPT --video_path SESSION.mp4 --realtime   # the file played at its true pace
    mvgpt live --model_path CKPT --video_path 0 --max_duration 120     # camera 0 for two minutes (or Ctrl-C)

Writes into --out: `events.jsonl` (one line per feedback, as it happens), `feedback.srt` (subtitles any
player overlays on the video), `summary.json`, and with --burn-in `feedback.mp4`, a copy of the video with the
feedback drawn in (from a camera or stream the frames are recorded to `capture.mp4` first). Events are printed
as they come; the summary gives the real-time factor and how many windows were skipped to keep up.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
from pathlib import Path

HELP = "timestamped live feedback on a long video, a camera or a stream (JSONL, SRT, captioned video)"

DEFAULT_OUT_ROOT = Path("results/live")


def configure(parser: argparse.ArgumentParser) -> None:
    from mobilevideogpt.live.defaults import (
        DEFAULT_DISPLAY_S,
        DEFAULT_MAX_NEW_TOKENS,
        DEFAULT_STRIDE_S,
        DEFAULT_THRESHOLD,
        DEFAULT_WINDOW_S,
    )
    from mobilevideogpt.qved.windows import LIVE_PROMPT

    from .common import add_model_options

    parser.description = __doc__.split("\n\n")[0]
    add_model_options(parser)
    parser.add_argument(
        "--video_path", "--video-path", required=True, help="a video file, a camera index (0) or a stream URL"
    )
    parser.add_argument("--window", type=float, default=DEFAULT_WINDOW_S, help=f"window seconds (default {DEFAULT_WINDOW_S})")
    parser.add_argument("--stride", type=float, default=DEFAULT_STRIDE_S, help=f"seconds between answers (default {DEFAULT_STRIDE_S})")
    parser.add_argument(
        "--threshold",
        type=float,
        default=DEFAULT_THRESHOLD,
        help=f"say a feedback only if its ROUGE-L F1 to the last one said is below this (default {DEFAULT_THRESHOLD}; "
        "1 = drop exact repeats only)",
    )
    parser.add_argument("--realtime", action="store_true", help="play a video file at its true pace, as if live")
    parser.add_argument("--out", type=Path, help=f"output folder (default {DEFAULT_OUT_ROOT}/<video name>)")
    parser.add_argument("--burn-in", "--burn_in", action="store_true", help="also write feedback.mp4 with the text drawn in")
    parser.add_argument("--prompt", default=LIVE_PROMPT, help=f"asked about every window (default {LIVE_PROMPT!r})")
    parser.add_argument("--max_new_tokens", "--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS,
                        help=f"longest answer per window (default {DEFAULT_MAX_NEW_TOKENS})")
    parser.add_argument("--display", type=float, default=DEFAULT_DISPLAY_S,
                        help=f"seconds a feedback stays on screen at most (default {DEFAULT_DISPLAY_S})")
    parser.add_argument("--max_duration", "--max-duration", type=float, help="stop after this many seconds of video")
    parser.add_argument("--no-cache", "--no_cache", dest="cache", action="store_false",
                        help="recompute every frame of every window (for measuring what the cache saves)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")


def default_out(video_path: str) -> Path:
    from mobilevideogpt.live.frames import parse_capture_spec

    spec = parse_capture_spec(video_path)
    if spec is None:
        name = Path(video_path).stem
    else:
        name = f"camera{spec}" if isinstance(spec, int) else re.sub(r"[^A-Za-z0-9._-]+", "_", str(spec))
    return DEFAULT_OUT_ROOT / (name or "session")


def _clock(seconds: float) -> str:
    minutes, secs = divmod(seconds, 60)
    return f"{int(minutes):02d}:{secs:06.3f}"


def _keep_up_hints(chat) -> list[str]:
    """What would let a session that is slower than real time keep up, beyond a longer stride."""
    import torch

    from ..errors import ModelLoadError
    from ..runtime import plan_inference

    hints = []
    plan = chat.plan
    # int8 x int8 beats fp32 products, not bf16 matrix units (a Xeon with AMX: real-time factor 2.1 against 1.5).
    if plan is not None and plan.device.type == "cpu" and not plan.int8_matmul and plan.prefill_dtype == torch.float32:
        try:
            plan_inference("cpu", "auto", "w8a8")
            hints.append("--quantize w8a8 (int8 x int8 products on this CPU)")
        except ModelLoadError:
            pass
    if chat.visual_tokens == chat.model.config.full_visual_tokens_per_video:
        hints.append("a model finetuned with fewer visual tokens (VISUAL_TOKENS=0.25 for mvgpt train)")
    return hints


def _summary_lines(summary, chat) -> list[str]:
    lines = [
        (
            f"answered {summary.windows_answered} windows ({summary.windows_skipped} skipped to keep up) over "
            f"{summary.media_s:.1f} s of video in {summary.wall_s:.1f} s: {summary.events} feedback, "
            f"{summary.repeats_suppressed} repeats suppressed, {summary.silent_windows} windows with nothing to say"
        )
    ]
    if summary.real_time_factor is not None:
        verdict = "keeps up with a live source"
        if summary.real_time_factor > 1:
            hints = ["a longer --stride", *_keep_up_hints(chat)]
            verdict = (
                f"slower than real time; to keep up: {', '.join(hints[:-1])} or {hints[-1]}" if len(hints) > 1
                else f"slower than real time; to keep up: {hints[0]}"
            ) + " (docs/LIVE.md)"
        lines.append(
            f"real-time factor {summary.real_time_factor:.2f} ({summary.seconds_per_window:.2f} s per window, one every "
            f"{summary.stride_s:.2f} s): {verdict}"
        )
    if summary.cache_hits is not None and summary.cache_hits + summary.cache_misses:
        total = summary.cache_hits + summary.cache_misses
        lines.append(f"frame cache: {summary.cache_hits} of {total} window frames reused")
    if summary.new_tokens:
        lines.append(
            f"answers: {summary.new_tokens} tokens, {summary.draft_tokens_confirmed} of them repeated from the window "
            "before and checked several at a time"
        )
    return lines


def run(args: argparse.Namespace) -> int:
    from mobilevideogpt.live.frames import (
        CaptureSource,
        VideoFileSource,
        parse_capture_spec,
    )

    def status(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    out = args.out or default_out(args.video_path)
    spec = parse_capture_spec(args.video_path)
    if spec is not None and args.realtime:
        raise ValueError("--realtime plays a video file at its true pace; a camera or stream is live already")
    if args.max_duration is not None and args.max_duration <= 0:
        raise ValueError(f"--max_duration must be positive, got {args.max_duration}")
    # Open the video first, so a wrong path fails before the slow model load.
    if spec is None:
        source = VideoFileSource(args.video_path, realtime=args.realtime)
    else:
        source = CaptureSource(spec, record_to=out / "capture.mp4" if args.burn_in else None)
    try:
        chat = _load_chat(args, status)
    except BaseException:
        source.close()
        raise
    return _session(args, chat, source, out, status)


def _load_chat(args: argparse.Namespace, status):
    from ..checkpoints import resolve_model_path
    from ..runtime import plan_inference
    from .common import load_chat, quiet_libraries

    if not args.debug:
        quiet_libraries()
    source = resolve_model_path(args.model_path, args.model_base)
    plan = plan_inference(args.device, args.dtype, args.quantize)
    if source.note:
        status(source.note)
    return load_chat(args, status, source, plan)


def _session(args: argparse.Namespace, chat, source, out: Path, status) -> int:
    from mobilevideogpt.live.events import EventLog
    from mobilevideogpt.live.outputs import burn_in, captions, write_srt
    from mobilevideogpt.live.session import LiveSession

    def show(event) -> None:
        print(f"[{_clock(event.time)}] {event.text}", flush=True)

    session = LiveSession(
        chat,
        prompt=args.prompt,
        window_s=args.window,
        stride_s=args.stride,
        threshold=args.threshold,
        cache=args.cache,
        max_new_tokens=args.max_new_tokens,
        on_event=show,
        log=lambda message: status(f"warning: {message}"),
    )
    previous = signal.getsignal(signal.SIGINT)

    def interrupt(signum, frame) -> None:
        status("stopping after the current window (Ctrl-C again to abort) ...")
        session.stop()
        signal.signal(signal.SIGINT, previous)

    mode = "live" if source.live else "offline"
    status(f"{source.name}: {mode}, {source.fps:.2f} fps; window {args.window} s, stride {args.stride} s -> {out}")
    signal.signal(signal.SIGINT, interrupt)
    try:
        with EventLog(out / "events.jsonl") as log:
            result = session.run(source, event_log=log, max_duration_s=args.max_duration)
    finally:
        signal.signal(signal.SIGINT, previous)
    summary = result.summary
    shown = captions([event.feedback for event in result.events], args.display)
    written = [out / "events.jsonl", write_srt(out / "feedback.srt", shown)]
    if args.burn_in:
        video = source.record_to if source.record_to is not None else Path(args.video_path)
        frames = burn_in(video, shown, out / "feedback.mp4")
        written.append(out / "feedback.mp4")
        status(f"burned {len(shown)} captions into {frames} frames")
    (out / "summary.json").write_text(json.dumps(summary.to_dict(), indent=2) + "\n", encoding="utf-8")
    written.append(out / "summary.json")
    for line in _summary_lines(summary, chat):
        status(line)
    status("wrote " + ", ".join(str(path) for path in written))
    if summary.error:
        print(f"error: the video stopped early: {summary.error}", file=sys.stderr)
        return 1
    return 0
