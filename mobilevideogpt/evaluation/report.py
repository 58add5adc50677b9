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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .bertscore import BertScoreResult
from .metrics import MeteorScorer, base_exercise, exercise_match, rouge_l
from .predictions import EvalSample, record_matches
from .similarity import SimilarityResult

METRIC_DEFINITIONS = {
    "exercise_accuracy_exact": "share of answers whose text before the first ' - ' (lower-cased) equals the "
    "ground truth's; samples whose ground truth has no ' - ' are not counted",
    "exercise_accuracy_base": "the same, ignoring parenthesised qualifiers such as '(right arm)'",
    "rouge_l": "ROUGE-L F-measure (LCS), rouge-score tokenisation without stemming",
    "meteor": "METEOR (alpha 0.9, beta 3, gamma 0.5); the label says which matching stages were available",
    "bertscore_f1": "BERTScore F1 without baseline rescaling, only when bert-score and its model are local",
    "sentence_similarity": "cosine similarity of all-MiniLM-L6-v2 sentence embeddings (the public QVED fork's metric)",
    "time_to_first_token_s": "video decode + vision encoders + LLM prefill, per video",
    "decode_tokens_per_s": "new tokens after the first / time after the first token, per video",
    "tokens_per_s": "all new tokens / all generation time (prefill + decode), over the run",
}
# For context only: QEVD's Stream-VLM baseline ("Live Fitness Coaching as a Testbed for Situated Interaction",
# NeurIPS 2024) scores live feedback on long videos, a different setting from clip-level answers.
REFERENCE_NUMBERS = {
    "source": "QEVD Stream-VLM baseline (NeurIPS 2024): live feedback on long videos, a different setting",
    "meteor": 0.127,
    "rouge_l": 0.112,
    "bertscore_f1": 0.862,
}
NO_EXERCISE, OTHER_EXERCISE = "(none)", "(other)"


@dataclass
class ModelRun:
    """One model's predictions for the report."""

    label: str
    config: dict[str, Any]
    records: dict[str, dict[str, Any]]
    bertscore: BertScoreResult | None = None
    similarity: SimilarityResult | None = None


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
    """One model's part of the report: its sample counts and failures, the metrics over its answers, per class,
    the confusion of exercises, its throughput, and every scored sample."""
    pairs = completed_pairs(samples, run)
    failures = failed_samples(samples, run)
    per_sample = [score_sample(sample, record, i, run, meteor) for i, (sample, record) in enumerate(pairs)]
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
        "metrics": model_metrics(per_sample, run, meteor),
        "per_class": per_class_means(per_sample),
        "confusion": exercise_confusion(per_sample),
        "throughput": throughput([record for _, record in pairs]),
        "run": run.config,
        "per_sample": per_sample,
    }


def failed_samples(samples: list[EvalSample], run: ModelRun) -> list[dict[str, Any]]:
    """The samples whose prediction failed (an unreadable video), with the recorded error."""
    return [
        {"id": s.id, "video": s.video, "error": run.records[s.id].get("error")}
        for s in samples
        if s.id in run.records and run.records[s.id].get("status") != "ok"
    ]


def score_sample(sample: EvalSample, record: dict, index: int, run: ModelRun, meteor: MeteorScorer) -> dict[str, Any]:
    """One answered sample's row: texts, ROUGE-L, METEOR, the exercise named and, when computed for the run,
    BERTScore and sentence similarity (`index`: the sample's place among the run's completed ones)."""
    prediction, reference = record["prediction"], sample.reference
    match = exercise_match(prediction, reference)
    row = {
        "id": sample.id,
        "video": sample.video,
        "reference": reference,
        "prediction": prediction,
        "rouge_l": rouge_l(prediction, reference),
        "meteor": meteor.score(prediction, reference),
        "exercise_reference": match.reference,
        "exercise_predicted": match.predicted,
        "exercise_exact": match.exact if match.scorable else None,
        "exercise_base": match.base if match.scorable else None,
    }
    if run.bertscore is not None and run.bertscore.f1 is not None:
        row["bertscore_f1"] = run.bertscore.f1[index]
    if run.similarity is not None and run.similarity.scores is not None:
        row["sentence_similarity"] = run.similarity.scores[index]
    return row


def model_metrics(per_sample: list[dict[str, Any]], run: ModelRun, meteor: MeteorScorer) -> dict[str, Any]:
    """Exercise accuracy (exact and base) over the scorable rows, and the mean of each text metric."""
    scorable = [row for row in per_sample if row["exercise_exact"] is not None]
    bertscore, similarity = run.bertscore, run.similarity
    return {
        "exercise_accuracy_exact": _accuracy([row["exercise_exact"] for row in scorable]),
        "exercise_accuracy_base": _accuracy([row["exercise_base"] for row in scorable]),
        "rouge_l": {"mean": _mean([r["rouge_l"] for r in per_sample]), "n": len(per_sample)},
        "meteor": {"mean": _mean([r["meteor"] for r in per_sample]), "n": len(per_sample), "label": meteor.label},
        "bertscore_f1": {
            "mean": _mean(bertscore.f1) if bertscore is not None and bertscore.f1 is not None else None,
            "n": len(bertscore.f1) if bertscore is not None and bertscore.f1 is not None else 0,
            "note": bertscore.note if bertscore is not None else "BERTScore not requested (--no_bertscore)",
        },
        "sentence_similarity": {
            "mean": _mean(similarity.scores) if similarity is not None and similarity.scores is not None else None,
            "n": len(similarity.scores) if similarity is not None and similarity.scores is not None else 0,
            "note": similarity.note if similarity is not None else "not requested (--no_similarity)",
        },
    }


def throughput(records: list[dict]) -> dict[str, Any]:
    """Time to first token, encoders, prefill, decoding speed and latency over the completed records."""
    timings = [record["timings"] for record in records]
    latencies = [t["total_s"] for t in timings]
    generation_time = sum(t["prefill_s"] + t["decode_s"] for t in timings)
    new_tokens = sum(t["new_tokens"] for t in timings)
    return {
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
        "stopped_at_max_new_tokens": sum(record.get("finish_reason") == "length" for record in records),
    }


_CLASS_METRICS = ("rouge_l", "meteor", "sentence_similarity", "bertscore_f1")


def per_class_means(per_sample: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """{reference exercise (qualifiers dropped): n, exercise accuracy and the mean of each text metric}."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in per_sample:
        if row["exercise_reference"] is not None:
            groups.setdefault(base_exercise(row["exercise_reference"]), []).append(row)
    table = {}
    for name in sorted(groups):
        rows = groups[name]
        entry: dict[str, Any] = {"n": len(rows), "exercise_accuracy": _accuracy([r["exercise_base"] for r in rows])}
        for metric in _CLASS_METRICS:
            values = [r[metric] for r in rows if r.get(metric) is not None]
            entry[metric] = _mean(values)
        table[name] = entry
    return table


def exercise_confusion(per_sample: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts of (reference exercise, predicted exercise), qualifiers dropped; a prediction naming no exercise is
    "(none)", one naming an exercise no reference has is "(other)"."""
    scorable = [r for r in per_sample if r["exercise_reference"] is not None]
    classes = sorted({base_exercise(r["exercise_reference"]) for r in scorable})
    columns = classes + [NO_EXERCISE, OTHER_EXERCISE]
    counts = [[0] * len(columns) for _ in classes]
    for row in scorable:
        predicted = row["exercise_predicted"]
        column = NO_EXERCISE if predicted is None else base_exercise(predicted)
        if column not in columns:
            column = OTHER_EXERCISE
        counts[classes.index(base_exercise(row["exercise_reference"]))][columns.index(column)] += 1
    return {"classes": classes, "predicted": columns, "counts": counts}


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
        "reference_numbers": REFERENCE_NUMBERS,
        "models": [summarize_model(samples, run, meteor) for run in runs],
    }


def format_number(value: float | None, digits: int = 4, unit: str = "") -> str:
    return "n/a" if value is None else f"{value:.{digits}f}{unit}"


def format_accuracy(entry: dict[str, Any], digits: int = 1) -> str:
    """An accuracy entry ({value, correct, n}) as "83.3 % (30/36)"."""
    if entry["value"] is None:
        return "n/a"
    return f"{100 * entry['value']:.{digits}f} % ({entry['correct']}/{entry['n']})"


def _mean_or_skipped(metric: str) -> Callable[[dict[str, Any]], str]:
    """A row cell for a metric that runs only when its model is available."""

    def cell(model: dict[str, Any]) -> str:
        mean = model["metrics"][metric]["mean"]
        return "skipped" if mean is None else format_number(mean)

    return cell


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
        row("Exercise identified (exact)", lambda m: format_accuracy(m["metrics"]["exercise_accuracy_exact"])),
        row(
            "Exercise identified (ignoring qualifiers)", lambda m: format_accuracy(m["metrics"]["exercise_accuracy_base"])
        ),
        row("ROUGE-L (F)", lambda m: format_number(m["metrics"]["rouge_l"]["mean"])),
        row(report["meteor_variant"], lambda m: format_number(m["metrics"]["meteor"]["mean"])),
        row("BERTScore F1", _mean_or_skipped("bertscore_f1")),
        row("Sentence similarity (MiniLM)", _mean_or_skipped("sentence_similarity")),
        row("Time to first token (mean)", lambda m: format_number(m["throughput"]["mean_time_to_first_token_s"], 2, " s")),
        row("Decode speed (mean per video)", lambda m: format_number(m["throughput"]["mean_decode_tokens_per_s"], 1, " tok/s")),
        row("Generation throughput", lambda m: format_number(m["throughput"]["tokens_per_s"], 1, " tok/s")),
        row(
            "Latency per video (mean / median)",
            lambda m: (
                f"{format_number(m['throughput']['mean_latency_s'], 2, ' s')} / "
                f"{format_number(m['throughput']['median_latency_s'], 2, ' s')}"
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
        f"For context only — {REFERENCE_NUMBERS['source']}: METEOR {REFERENCE_NUMBERS['meteor']}, "
        f"ROUGE-L {REFERENCE_NUMBERS['rouge_l']}, BERTScore {REFERENCE_NUMBERS['bertscore_f1']}.",
        "",
        *_per_class_markdown(models),
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


def _per_class_markdown(models: list[dict[str, Any]]) -> list[str]:
    lines = []
    for m in models:
        if not m["per_class"]:
            continue
        lines += [f"### Per exercise: {m['label']}", "", "| exercise | n | identified | ROUGE-L | METEOR | similarity |",
                  "|---|---|---|---|---|---|"]
        for name, entry in m["per_class"].items():
            lines.append(
                f"| {name} | {entry['n']} | {format_accuracy(entry['exercise_accuracy'])} | {format_number(entry['rouge_l'])} | "
                f"{format_number(entry['meteor'])} | {format_number(entry['sentence_similarity'])} |"
            )
        lines.append("")
    return lines


def write_report(report: dict[str, Any], output_dir: Path) -> tuple[Path, Path]:
    output_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = output_dir / "report.json", output_dir / "report.md"
    json_path.write_text(json.dumps(report, indent=2, ensure_ascii=False))
    md_path.write_text(render_markdown(report))
    return json_path, md_path
