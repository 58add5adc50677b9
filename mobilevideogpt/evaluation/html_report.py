"""`report.html`: one self-contained page (no outside files) with the metrics, the plots and every sample.

Per model: the metric table, the exercise confusion matrix and per-class metric means (PNG, inline). Per sample: the
video's first frame, the reference and each model's prediction with its ROUGE-L / METEOR.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from .plots import confusion_matrix_png, per_class_png
from .predictions import EvalSample
from .report import format_accuracy, format_number

THUMBNAIL_WIDTH = 160
_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 0.8em 0; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: top; font-size: 0.9em; }
th { background: #f0f3f7; }
.context { color: #666; font-size: 0.85em; }
img.plot { max-width: 100%; margin: 0.5em 1em 0.5em 0; }
img.frame { width: 160px; }
"""


def _data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def first_frame_data_url(path: Path | None) -> str | None:
    """The first frame of a video as a small inline JPEG, or None when it cannot be read."""
    import cv2

    if path is None:
        return None
    capture = cv2.VideoCapture(str(path))
    try:
        ok, frame = capture.read()
    finally:
        capture.release()
    if not ok or frame is None:
        return None
    height = round(frame.shape[0] * THUMBNAIL_WIDTH / frame.shape[1])
    ok, jpeg = cv2.imencode(".jpg", cv2.resize(frame, (THUMBNAIL_WIDTH, height)), [cv2.IMWRITE_JPEG_QUALITY, 80])
    return _data_url(jpeg.tobytes(), "image/jpeg") if ok else None


def _metric_table(models: list[dict[str, Any]]) -> str:
    rows = [
        ("Exercise identified (exact)", lambda m: format_accuracy(m["metrics"]["exercise_accuracy_exact"])),
        ("Exercise identified (ignoring qualifiers)", lambda m: format_accuracy(m["metrics"]["exercise_accuracy_base"])),
        ("ROUGE-L", lambda m: format_number(m["metrics"]["rouge_l"]["mean"], 3)),
        ("METEOR", lambda m: format_number(m["metrics"]["meteor"]["mean"], 3)),
        ("Sentence similarity (MiniLM)", lambda m: format_number(m["metrics"]["sentence_similarity"]["mean"], 3)),
        ("BERTScore F1", lambda m: format_number(m["metrics"]["bertscore_f1"]["mean"], 3)),
        ("Time to first token (mean, s)", lambda m: format_number(m["throughput"]["mean_time_to_first_token_s"], 2)),
    ]
    head = "<tr><th></th>" + "".join(f"<th>{html.escape(m['label'])}</th>" for m in models) + "</tr>"
    body = "".join(
        f"<tr><td>{html.escape(name)}</td>" + "".join(f"<td>{html.escape(cell(m))}</td>" for m in models) + "</tr>"
        for name, cell in rows
    )
    return f"<table>{head}{body}</table>"


def _plots(model: dict[str, Any]) -> str:
    label = html.escape(model["label"])
    parts = []
    confusion = model["confusion"]
    if confusion["classes"]:
        png = confusion_matrix_png(
            confusion["classes"], confusion["predicted"], confusion["counts"], f"{model['label']}: exercise confusion"
        )
        parts.append(f'<img class="plot" alt="{label}: exercise confusion matrix" src="{_data_url(png, "image/png")}">')
    if model["per_class"]:
        classes = list(model["per_class"])
        series = {
            "identified": [model["per_class"][c]["exercise_accuracy"]["value"] for c in classes],
            "ROUGE-L": [model["per_class"][c]["rouge_l"] for c in classes],
            "METEOR": [model["per_class"][c]["meteor"] for c in classes],
            "similarity": [model["per_class"][c]["sentence_similarity"] for c in classes],
        }
        png = per_class_png(classes, series, f"{model['label']}: per exercise")
        parts.append(f'<img class="plot" alt="{label}: per-exercise metrics" src="{_data_url(png, "image/png")}">')
    return f"<h3>{label}</h3>" + "".join(parts)


def _sample_rows(report: dict[str, Any], samples: list[EvalSample], records: dict[str, dict[str, dict]]) -> str:
    by_model = [{row["id"]: row for row in m["per_sample"]} for m in report["models"]]
    predictions = [records.get(m["label"], {}) for m in report["models"]]
    rows = []
    for sample in samples:
        frame = first_frame_data_url(sample.video_path)
        image = f'<img class="frame" alt="first frame" src="{frame}">' if frame else "(no frame)"
        cells = []
        for model, scores, recorded in zip(report["models"], by_model, predictions, strict=True):
            record = recorded.get(sample.id)
            text = record.get("prediction") if record and record.get("status") == "ok" else None
            score = scores.get(sample.id)
            detail = (
                f"<br><span class=context>ROUGE-L {format_number(score['rouge_l'], 3)} · "
                f"METEOR {format_number(score['meteor'], 3)}</span>"
                if score
                else ""
            )
            shown = html.escape(text) if text is not None else "<em>(no answer)</em>"
            cells.append(f"<td><b>{html.escape(model['label'])}</b>: {shown}{detail}</td>")
        rows.append(
            f"<tr><td>{image}<br><code>{html.escape(sample.video)}</code></td>"
            f"<td>{html.escape(sample.reference or '')}</td>{''.join(cells)}</tr>"
        )
    head = "<tr><th>video</th><th>reference</th>" + "".join(
        f"<th>{html.escape(m['label'])}</th>" for m in report["models"]
    ) + "</tr>"
    return f"<table>{head}{''.join(rows)}</table>"


def render_html(report: dict[str, Any], samples: list[EvalSample], records: dict[str, dict[str, dict]]) -> str:
    """The page; `records` maps each model label to its predictions-file records (by sample id)."""
    reference = report["reference_numbers"]
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Evaluation: {html.escape(Path(report['split']).name)}</title>
<style>{_STYLE}</style></head><body>
<h1>Evaluation: {html.escape(Path(report['split']).name)}</h1>
<p>Split <code>{html.escape(report['split'])}</code>, {report['num_samples']} samples; generated {html.escape(report['generated_at'])}.
{html.escape(report.get('note') or '')}</p>
{_metric_table(report['models'])}
<p class="context">For context only — {html.escape(reference['source'])}: METEOR {reference['meteor']},
ROUGE-L {reference['rouge_l']}, BERTScore {reference['bertscore_f1']}. METEOR here: {html.escape(report['meteor_variant'])}.</p>
<h2>Plots</h2>
{''.join(_plots(m) for m in report['models'])}
<h2>Samples</h2>
{_sample_rows(report, samples, records)}
</body></html>
"""


def write_html(report: dict[str, Any], samples: list[EvalSample], records: dict[str, dict[str, dict]], output_dir: Path) -> Path:
    path = output_dir / "report.html"
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(render_html(report, samples, records), encoding="utf-8")
    temporary.replace(path)
    return path
