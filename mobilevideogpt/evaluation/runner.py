"""Evaluate one or more models on a split file: resumable predictions, then one report for all of them.

For each model, predictions go to `output_dir/<label>/predictions.jsonl` (+ `run_config.json`), resumable; then
one report for all models: `output_dir/report.json`, `report.md` and a self-contained `report.html` (plots, and
per sample the video's first frame, the reference and each prediction). Default output_dir:
`results/eval/<split name>/<label>[_vs_<label>...]`.
"""

from __future__ import annotations

import gc
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..checkpoints import ModelSource, is_training_output, resolve_model_path
from ..constants import DEFAULT_SYSTEM_PROMPT
from .bertscore import DEFAULT_BERTSCORE_MODEL, bertscore_f1
from .html_report import write_html
from .metrics import meteor_scorer
from .predictions import (
    PREDICTIONS_FILE,
    RUN_CONFIG_FILE,
    EvalSample,
    EvaluationError,
    check_run_config,
    load_split,
    read_predictions,
    run_predictions,
)
from .report import ModelRun, build_report, completed_pairs, write_report
from .similarity import sentence_similarity

logger = logging.getLogger(__name__)

DEFAULT_OUTPUT_ROOT = Path("results/eval")


@dataclass
class EvaluationSettings:
    """What to evaluate and how; `models` are model paths (hub id, model folder, training checkpoint or run)."""

    models: list[str]
    split: str
    labels: list[str] | None = None
    output_dir: Path | None = None
    model_base: str | None = None
    max_new_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    device: str = "auto"
    dtype: str = "auto"
    quantize: str | None = None  # constants.QUANTIZE_CHOICES (CPU only)
    clip_path: str | None = None
    videomamba_path: str | None = None
    visual_tokens: int | float | str | None = None  # a visual-token budget request; None: each model's recorded one
    limit: int | None = None
    retry_failed: bool = False
    overwrite: bool = False
    report_only: bool = False
    bertscore_model: str = DEFAULT_BERTSCORE_MODEL
    bertscore_layers: int | None = None
    bertscore: bool = True
    similarity: bool = True
    progress: bool = True


def model_label(model_path: str) -> str:
    """A folder-safe name: "run/checkpoint-final" → "run-checkpoint-final", "owner/Model" → "Model"."""
    parts = [p for p in Path(model_path).parts if p not in ("/", ".", "..")]
    tail = parts[-2:] if len(parts) >= 2 and parts[-1].startswith("checkpoint") else parts[-1:]
    return re.sub(r"[^A-Za-z0-9._-]+", "_", "-".join(tail)) or "model"


def unique_labels(labels: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label}-{seen[label]}")
    return out


def run_config(source: ModelSource, settings: EvaluationSettings) -> dict:
    return {
        "model_path": source.model_path,
        "base": source.base,
        "checkpoint": str(source.checkpoint) if source.checkpoint else None,
        "checkpoint_marker": source.marker,
        "split": str(Path(settings.split).resolve()),
        "max_new_tokens": settings.max_new_tokens,
        "temperature": settings.temperature,
        "top_p": settings.top_p if settings.temperature > 0 else None,
        "seed": settings.seed,
        "system_prompt": DEFAULT_SYSTEM_PROMPT,
        "device": settings.device,
        "dtype": settings.dtype,
        **({"quantize": settings.quantize} if settings.quantize not in (None, "none") else {}),
        **({"visual_tokens": settings.visual_tokens} if settings.visual_tokens is not None else {}),
    }


def _free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _base_for(model_path: str, settings: EvaluationSettings) -> str | None:
    # --model_base concerns training outputs; in a comparison the other model may be a base model.
    return settings.model_base if is_training_output(model_path) else None


def recorded_run_config(model_dir: Path, model_path: str) -> dict:
    if not (model_dir / PREDICTIONS_FILE).is_file():
        raise EvaluationError(f"--report_only: {model_dir / PREDICTIONS_FILE} does not exist; run the evaluation first")
    if (model_dir / RUN_CONFIG_FILE).is_file():
        return json.loads((model_dir / RUN_CONFIG_FILE).read_text())
    return {"model_path": model_path}


def predict(
    model_path: str,
    source: ModelSource,
    label: str,
    samples: list[EvalSample],
    model_dir: Path,
    settings: EvaluationSettings,
    log: Callable[[str], None],
) -> None:
    """Load one model, run it over the pending samples, free it again."""
    from ..chat import VideoChat

    log(f"[{label}] loading {source.describe()}")
    # The checkpoint classified (and recorded in run_config.json) above, not the run folder again: a training
    # run that saves meanwhile must not switch the predictions to another checkpoint.
    chat = VideoChat.from_pretrained(
        source.checkpoint if source.checkpoint is not None else model_path,
        model_base=_base_for(model_path, settings),
        device=settings.device,
        dtype=settings.dtype,
        clip_path=settings.clip_path,
        videomamba_path=settings.videomamba_path,
        quantize=settings.quantize,
        visual_tokens=settings.visual_tokens,
    )
    generation = {
        "max_new_tokens": settings.max_new_tokens,
        "temperature": settings.temperature,
        "top_p": settings.top_p,
        "seed": settings.seed,
    }
    ran, skipped = run_predictions(chat, samples, model_dir, generation, settings.retry_failed, settings.progress, label)
    log(f"[{label}] {ran} sample(s) run, {skipped} already done")
    del chat
    _free_memory()


def evaluate(settings: EvaluationSettings, log: Callable[[str], None] = logger.info) -> tuple[Path, dict[str, Any]]:
    """Predict (unless `report_only`) and report; returns (output folder, report). Raises `EvaluationError`."""
    models = settings.models
    if settings.labels and len(settings.labels) != len(models):
        raise EvaluationError(f"--labels names {len(settings.labels)} model(s) but {len(models)} are evaluated")
    if settings.limit is not None and settings.limit < 1:
        raise EvaluationError("--limit must be at least 1")
    all_samples = load_split(settings.split)
    samples = all_samples[: settings.limit] if settings.limit else all_samples
    if not samples:
        raise EvaluationError(f"split file {settings.split} holds no records")
    # Classify every model first: a wrong path fails before hours of generation for the others.
    sources = [] if settings.report_only else [resolve_model_path(m, _base_for(m, settings)) for m in models]
    labels = unique_labels(settings.labels or [model_label(m) for m in models])
    output_dir = settings.output_dir or DEFAULT_OUTPUT_ROOT / Path(settings.split).stem / "_vs_".join(labels)
    meteor = meteor_scorer()
    runs = []
    for i, (model_path, label) in enumerate(zip(models, labels, strict=True)):
        model_dir = output_dir / label
        if settings.report_only:
            config = recorded_run_config(model_dir, model_path)
        else:
            config = run_config(sources[i], settings)
            check_run_config(model_dir, config, settings.overwrite)
            predict(model_path, sources[i], label, samples, model_dir, settings, log)
        run = ModelRun(label, config, read_predictions(model_dir / PREDICTIONS_FILE))
        pairs = completed_pairs(samples, run)
        predictions, references = [record["prediction"] for _, record in pairs], [s.reference for s, _ in pairs]
        if settings.bertscore:
            run.bertscore = bertscore_f1(
                predictions, references, model=settings.bertscore_model, num_layers=settings.bertscore_layers
            )
        if settings.similarity:
            run.similarity = sentence_similarity(predictions, references)
        runs.append(run)

    note = f"First {len(samples)} of {len(all_samples)} samples (--limit)." if len(samples) < len(all_samples) else ""
    report = build_report(str(settings.split), samples, runs, meteor, note)
    write_report(report, output_dir)
    write_html(report, samples, {run.label: run.records for run in runs}, output_dir)
    return output_dir, report
