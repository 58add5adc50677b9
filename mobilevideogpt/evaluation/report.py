"""Evaluation report (JSON + Markdown) from predictions files: one model, or several side by side.

Metrics are computed here from the recorded texts, not while generating, so a report can be rebuilt
(`--report_only`) after a metric changes without running the model again. Accuracy and text metrics
average over the samples that produced an answer; failed samples (unreadable videos) are counted and
listed; samples not yet run (interrupted run, `--limit`) are counted as pending.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .bertscore import BertScoreResult
from .metrics import MeteorScorer, exercise_match, rouge_l
from .predictions import EvalSample, record_matches

METRIC_DEFINITIONS = {
    "exercise_accuracy_exact": "share of answers whose text before the first ' - ' (lower-cased) equals the "
    "ground truth's; samples whose ground truth has no ' - ' are not counted",
    "exercise_accuracy_base": "the same, ignoring parenthesised qualifiers such as '(right arm)'",
    "rouge_l": "ROUGE-L F-measure (LCS), rouge-score tokenisation without stemming",
    "meteor": "METEOR (alpha 0.9, beta 3, gamma 0.5); the label says which matching stages were available",
    "bertscore_f1": "BERTScore F1 without baseline rescaling, only when bert-score and its model are local",
    "time_to_first_token_s": "video decode + vision encoders + LLM prefill, per video",
    "decode_tokens_per_s": "new tokens after the first / time after the first token, per video",
    "tokens_per_s": "all new tokens / all generation time (prefill + decode), over the run",
}


@dataclass
class ModelRun:
    """One model's predictions for the report."""

    label: str
    config: dict[str, Any]
    records: dict[str, dict[str, Any]]
    bertscore: BertScoreResult | None = None


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def _accuracy(flags: list[bool]) -> dict[str, Any]:
    return {"value": (sum(flags) / len(flags)) if flags else None, "correct": sum(flags), "n": len(flags)}


def completed_pairs(samples: list[EvalSample], run: ModelRun) -> list[tuple[EvalSample, dict[str, Any]]]:
    """(sample, record) for every sample of the split with a successful record, in split order."""
    pairs = []
    for sample in samples:
        record = run.records.get(sample.id)
        if record_matches(sample, record) and record.get("status") == "ok":
            pairs.append((sample, record))
    return pairs


def summarize_model(samples: list[EvalSample], run: ModelRun, meteor: MeteorScorer) -> dict[str, Any]:
    pairs = completed_pairs(samples, run)
    failures = [
        {"id": s.id, "video": s.video, "error": run.records[s.id].get("error")}
        for s in samples
        if s.id in run.records and run.records[s.id].get("status") != "ok"
    ]
    per_sample = []
    exact, base = [], []
    for i, (sample, record) in enumerate(pairs):
        prediction, reference = record["prediction"], sample.reference
        match = exercise_match(prediction, reference)
        row = {
            "id": sample.id,
            "video": sample.video,
            "rouge_l": rouge_l(prediction, reference),
            "meteor": meteor.score(prediction, reference),
            "exercise_reference": match.reference,
            "exercise_predicted": match.predicted,
            "exercise_exact": match.exact if match.scorable else None,
            "exercise_base": match.base if match.scorable else None,
        }
        if run.bertscore is not None and run.bertscore.f1 is not None:
            row["bertscore_f1"] = run.bertscore.f1[i]
        if match.scorable:
            exact.append(match.exact)
            base.append(match.base)
        per_sample.append(row)

    timings = [record["timings"] for _, record in pairs]
    latencies = [t["total_s"] for t in timings]
    generation_time = sum(t["prefill_s"] + t["decode_s"] for t in timings)
    new_tokens = sum(t["new_tokens"] for t in timings)
    bertscore = run.bertscore
    return {
        "label": run.label,
        "model": {k: run.config.get(k) for k in ("model_path", "checkpoint", "base")},
        "samples": {
            "total": len(samples),
            "ok": len(pairs),
            "failed": len(failures),
            "pending": len(samples) - len(pairs) - len(failures),
        },
        "failures": failures,
        "metrics": {
            "exercise_accuracy_exact": _accuracy(exact),
            "exercise_accuracy_base": _accuracy(base),
            "rouge_l": {"mean": _mean([r["rouge_l"] for r in per_sample]), "n": len(per_sample)},
            "meteor": {"mean": _mean([r["meteor"] for r in per_sample]), "n": len(per_sample), "label": meteor.label},
            "bertscore_f1": {
                "mean": _mean(bertscore.f1) if bertscore is not None and bertscore.f1 is not None else None,
                "n": len(bertscore.f1) if bertscore is not None and bertscore.f1 is not None else 0,
                "note": bertscore.note if bertscore is not None else "BERTScore not requested (--no_bertscore)",
            },
        },
        "throughput": {
            "mean_time_to_first_token_s": _mean([t["time_to_first_token_s"] for t in timings]),
            "mean_encode_s": _mean([t["encode_s"] for t in timings]),
            "mean_prefill_s": _mean([t["prefill_s"] for t in timings]),
            "mean_decode_tokens_per_s": _mean(
                [t["decode_tokens_per_s"] for t in timings if t.get("decode_tokens_per_s") is not None]
            ),
            "tokens_per_s": new_tokens / generation_time if generation_time > 0 else None,
            "mean_latency_s": _mean(latencies),
            "median_latency_s": statistics.median(latencies) if latencies else None,
            "total_new_tokens": new_tokens,
            "stopped_at_max_new_tokens": sum(record.get("finish_reason") == "length" for _, record in pairs),
        },
        "run": run.config,
        "per_sample": per_sample,
    }


def build_report(
    split: str, samples: list[EvalSample], runs: list[ModelRun], meteor: MeteorScorer, note: str = ""
) -> dict:
    return {
        "split": split,
        "num_samples": len(samples),
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "note": note,
        "metric_definitions": METRIC_DEFINITIONS,
        "meteor_variant": meteor.label,
        "models": [summarize_model(samples, run, meteor) for run in runs],
    }


def _fmt(value: float | None, digits: int = 4, unit: str = "") -> str:
    return "n/a" if value is None else f"{value:.{digits}f}{unit}"


def _fmt_accuracy(entry: dict[str, Any]) -> str:
    if entry["value"] is None:
        return "n/a"
    return f"{100 * entry['value']:.1f} % ({entry['correct']}/{entry['n']})"


def render_markdown(report: dict[str, Any]) -> str:
    models = report["models"]
    header = "| | " + " | ".join(m["label"] for m in models) + " |"
    rule = "|---|" + "---|" * len(models)

    def row(name: str, cell) -> str:
        return f"| {name} | " + " | ".join(cell(m) for m in models) + " |"

    rows = [
        row("Model", lambda m: f"`{m['model'].get('checkpoint') or m['model'].get('base')}`"),
        row(
            "Samples: answered / failed / pending",
            lambda m: f"{m['samples']['ok']} / {m['samples']['failed']} / {m['samples']['pending']}",
        ),
        row("Exercise identified (exact)", lambda m: _fmt_accuracy(m["metrics"]["exercise_accuracy_exact"])),
        row(
            "Exercise identified (ignoring qualifiers)", lambda m: _fmt_accuracy(m["metrics"]["exercise_accuracy_base"])
        ),
        row("ROUGE-L (F)", lambda m: _fmt(m["metrics"]["rouge_l"]["mean"])),
        row(report["meteor_variant"], lambda m: _fmt(m["metrics"]["meteor"]["mean"])),
        row(
            "BERTScore F1",
            lambda m: (
                _fmt(m["metrics"]["bertscore_f1"]["mean"])
                if m["metrics"]["bertscore_f1"]["mean"] is not None
                else "skipped"
            ),
        ),
        row("Time to first token (mean)", lambda m: _fmt(m["throughput"]["mean_time_to_first_token_s"], 2, " s")),
        row("Decode speed (mean per video)", lambda m: _fmt(m["throughput"]["mean_decode_tokens_per_s"], 1, " tok/s")),
        row("Generation throughput", lambda m: _fmt(m["throughput"]["tokens_per_s"], 1, " tok/s")),
        row(
            "Latency per video (mean / median)",
            lambda m: (
                f"{_fmt(m['throughput']['mean_latency_s'], 2, ' s')} / "
                f"{_fmt(m['throughput']['median_latency_s'], 2, ' s')}"
            ),
        ),
        row(
            "New tokens (total; answers cut at max_new_tokens)",
            lambda m: f"{m['throughput']['total_new_tokens']}; {m['throughput']['stopped_at_max_new_tokens']}",
        ),
    ]
    lines = [
        f"# QVED evaluation: {Path(report['split']).name}",
        "",
        f"Split `{report['split']}`, {report['num_samples']} samples; generated {report['generated_at']}."
        + (f" {report['note']}" if report.get("note") else ""),
        "",
        header,
        rule,
        *rows,
        "",
        "The QEVD paper reports METEOR, ROUGE-L and BERTScore; the rows above use the same metric names.",
        "",
        "## Notes",
        "",
        *[f"- **{name}**: {text}" for name, text in report["metric_definitions"].items()],
        *[f"- {m['label']}: {m['metrics']['bertscore_f1']['note']}" for m in models],
    ]
    failures = [(m["label"], f) for m in models for f in m["failures"]]
    if failures:
        lines += ["", "## Failed samples", ""]
        lines += [f"- {label}: `{f['video']}` ({f['id']}): {f['error']}" for label, f in failures]
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], output_dir: Path) -> tuple[Path, Path]:
    output_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = output_dir / "report.json", output_dir / "report.md"
    json_path.write_text(json.dumps(report, indent=2, ensure_ascii=False))
    md_path.write_text(render_markdown(report))
    return json_path, md_path
