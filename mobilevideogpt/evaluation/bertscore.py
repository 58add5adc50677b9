"""BERTScore F1, only when the `bert-score` package and its model are already on this machine.

Evaluation never downloads: the model must be a local folder or already in the Hugging Face cache
(default `roberta-large`, bert-score's English default; pre-fetch it with `huggingface-cli download
roberta-large` where there is internet). Otherwise the figure is skipped and the report says why.
Scores are plain F1 (no baseline rescaling), so they read like bert-score's defaults.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

DEFAULT_BERTSCORE_MODEL = "roberta-large"


@dataclass
class BertScoreResult:
    f1: list[float] | None  # one per pair, None when skipped
    note: str


def _locally_available(model: str) -> bool:
    if Path(model).expanduser().is_dir():
        return True
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    cached = try_to_load_from_cache(model, "config.json")
    return isinstance(cached, str) and os.path.isfile(cached)


def bertscore_f1(
    predictions: Sequence[str],
    references: Sequence[str],
    model: str = DEFAULT_BERTSCORE_MODEL,
    num_layers: int | None = None,
    device: str | None = None,
) -> BertScoreResult:
    """Per-pair BERTScore F1 with `model`, or a skip note naming what is missing."""
    if not predictions:
        return BertScoreResult(None, "BERTScore skipped: no completed predictions")
    try:
        import bert_score
    except ImportError:
        return BertScoreResult(
            None,
            "BERTScore skipped: the bert-score package is not installed "
            f"(pip install bert-score, and have {model} in the local Hugging Face cache)",
        )
    if not _locally_available(model):
        return BertScoreResult(
            None,
            f"BERTScore skipped: model {model} is not on this machine and evaluation does not download; "
            f"pre-fetch it (huggingface-cli download {model}) or pass a local folder with --bertscore_model",
        )
    try:
        _, _, f1 = bert_score.score(
            list(predictions),
            list(references),
            model_type=str(model),
            num_layers=num_layers,
            lang="en",
            device=device,
            verbose=False,
        )
    except (OSError, KeyError, ValueError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return BertScoreResult(None, f"BERTScore skipped: bert-score failed with {model} ({first})")
    return BertScoreResult([float(x) for x in f1], f"BERTScore F1 with {model} (no baseline rescaling)")
