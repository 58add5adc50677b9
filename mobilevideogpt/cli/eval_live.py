"""`mvgpt eval --live`: score timestamped feedback against timestamped references, as QEVD does.

    mvgpt eval --live --predictions results/live/session_01 results/live/session_02 --references sessions.json

Predictions: `events.jsonl` files written by `mvgpt live` (or their folders). References: a label file
(`{video: [{"time": s, "text": ...}]}`, see `mobilevideogpt.live.labels`). Each predictions file is paired with
the session of its events' video (the same file, else the only session with that file name); with a single
session and a single predictions file they are simply paired. Sessions without predictions are listed and
not scored.

Report (`live_report.json` and `live_report.md` in --output_dir, the table also printed): per session and
pooled, the T-F-Score (precision, recall and F of feedback matched within --tolerance seconds, one to one)
and METEOR / ROUGE-L over the matched pairs, with the clip evaluation's metric implementations.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mobilevideogpt.live.events import FeedbackEvent
    from mobilevideogpt.live.labels import SessionLabels
    from mobilevideogpt.live.scoring import LiveScore

EVENTS_FILE = "events.jsonl"
SUMMARY_FILE = "summary.json"
DEFAULT_OUTPUT_DIR = Path("results/eval/live")


class LiveEvalError(ValueError):
    """Predictions and references cannot be paired or read; the message says which file and why."""


def add_live_options(group) -> None:
    """The options of `mvgpt eval --live` (its --output_dir is eval's, default DEFAULT_OUTPUT_DIR here)."""
    group.add_argument(
        "--predictions", nargs="+", type=Path, help=f"{EVENTS_FILE} files written by `mvgpt live`, or their folders"
    )
    group.add_argument("--references", type=Path, help="label file: {video: [{time, text}, ...]}")
    group.add_argument("--tolerance", type=float, default=3.0, help="seconds within which feedback matches (default 3, QEVD)")
    group.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")


@dataclass
class ScoredSession:
    name: str
    predictions_file: Path
    score: LiveScore


def _events_file(path: Path) -> Path:
    candidate = path / EVENTS_FILE if path.is_dir() else path
    if not candidate.is_file():
        raise LiveEvalError(f"predictions not found: {candidate} (give an {EVENTS_FILE} or the folder holding it)")
    return candidate


def _predicted_video(events_file: Path, events: list[FeedbackEvent]) -> str | None:
    """The video the events are about: from the events, else from the `mvgpt live` summary beside them."""
    videos = {event.video for event in events if event.video}
    if len(videos) > 1:
        raise LiveEvalError(f"{events_file} mixes events of several videos ({', '.join(sorted(videos))})")
    if videos:
        return videos.pop()
    summary = events_file.parent / SUMMARY_FILE
    if summary.is_file():
        try:
            video = json.loads(summary.read_text(encoding="utf-8")).get("video")
        except (OSError, ValueError, AttributeError):
            return None
        return video if isinstance(video, str) and video else None
    return None


def pair_predictions(
    files: list[Path], sessions: list[SessionLabels]
) -> list[tuple[Path, list[FeedbackEvent], SessionLabels]]:
    """(events file, events, session) per predictions file; raises LiveEvalError when one cannot be paired."""
    from mobilevideogpt.live.events import read_events

    loaded = [(path, read_events(path)) for path in map(_events_file, files)]
    if len(sessions) == 1 and len(loaded) == 1:
        return [(loaded[0][0], loaded[0][1], sessions[0])]
    if any(session.video is None for session in sessions):
        raise LiveEvalError("a reference file holding a bare feedback list scores exactly one predictions file")
    by_path = {session.video.resolve(): session for session in sessions}
    pairs, used = [], {}
    for path, events in loaded:
        video = _predicted_video(path, events)
        if video is None:
            raise LiveEvalError(f"{path}: no event names its video and no {SUMMARY_FILE} is beside it; score it alone")
        session = by_path.get(Path(video).resolve())
        if session is None:
            named = [s for s in sessions if s.video.name == Path(video).name]
            if len(named) != 1:
                reason = "no reference session" if not named else f"{len(named)} reference sessions"
                raise LiveEvalError(f"{path}: its video {video} matches {reason} by path or file name")
            session = named[0]
        if session.key in used:
            raise LiveEvalError(f"{path} and {used[session.key]} are both predictions for session {session.key!r}")
        used[session.key] = path
        pairs.append((path, events, session))
    return pairs


def render_markdown(
    rows: list[ScoredSession], pooled: LiveScore, tolerance: float, meteor_label: str, unscored: list[str]
) -> str:
    from ..evaluation.report import format_number

    def _figure(value: float | None, digits: int = 3) -> str:
        return format_number(value, digits)

    lines = [
        "# Live feedback: T-F-Score and text quality of time-matched feedback",
        "",
        (
            f"Feedback matches within ±{tolerance:g} s, one to one (the most pairs, then the least total time "
            f"error). Text scores are means over matched pairs: {meteor_label}; ROUGE-L F1."
        ),
        "",
        "| session | references | predictions | matched | precision | recall | T-F-Score | METEOR | ROUGE-L | mean abs Δt (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, score in [(row.name, row.score) for row in rows] + [("**all (pooled)**", pooled)]:
        lines.append(
            f"| {name} | {score.references} | {score.predictions} | {score.matched} | {_figure(score.precision)} "
            f"| {_figure(score.recall)} | {_figure(score.f_score)} | {_figure(score.meteor)} | {_figure(score.rouge_l)} "
            f"| {_figure(score.mean_abs_time_error_s, 2)} |"
        )
    if unscored:
        lines += ["", f"Not scored (no predictions given): {', '.join(unscored)}."]
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    """`mvgpt eval --live`: pair, score, write and print the report."""
    from mobilevideogpt.evaluation.metrics import meteor_scorer
    from mobilevideogpt.live.events import EventLogError
    from mobilevideogpt.live.labels import LabelError, load_labels
    from mobilevideogpt.live.scoring import pool, score_session
    from mobilevideogpt.qved.convert import write_json

    if not args.predictions or not args.references:
        print("error: --live needs --predictions EVENTS... and --references SESSIONS.json", file=sys.stderr)
        return 2
    try:
        if args.tolerance < 0:
            raise LiveEvalError(f"--tolerance must be >= 0 seconds, got {args.tolerance}")
        sessions = load_labels(args.references)
        if not sessions:
            raise LiveEvalError(f"{args.references} lists no session")
        pairs = pair_predictions(args.predictions, sessions)
    except (LiveEvalError, LabelError, EventLogError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    meteor = meteor_scorer()
    rows = [
        ScoredSession(
            session.key or str(path),
            path,
            score_session([e.feedback for e in events], session.feedback, args.tolerance, meteor.score),
        )
        for path, events, session in pairs
    ]
    scored = {session.key for _, _, session in pairs}
    unscored = [session.key for session in sessions if session.key not in scored]
    pooled = pool([row.score for row in rows])
    report = {
        "tolerance_s": args.tolerance,
        "matching": "one-to-one, most pairs then least total time error (optimal assignment)",
        "meteor": meteor.label,
        "references": str(args.references),
        "pooled": pooled.to_json(with_pairs=False),
        "sessions": [
            {"session": row.name, "predictions": str(row.predictions_file), **row.score.to_json()} for row in rows
        ],
        "unscored_sessions": unscored,
    }
    markdown = render_markdown(rows, pooled, args.tolerance, meteor.label, unscored)
    out = args.output_dir or DEFAULT_OUTPUT_DIR
    try:
        write_json(out / "live_report.json", report)
        (out / "live_report.md").write_text(markdown, encoding="utf-8")
    except OSError as exc:
        print(f"error: cannot write the report into {out}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2, ensure_ascii=False) if args.json else markdown, end="" if not args.json else "\n")
    print(f"wrote {out / 'live_report.json'} and {out / 'live_report.md'}", file=sys.stderr)
    return 0
