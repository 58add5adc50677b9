"""Parameter-free, attention-based frame selection inside each chunk (upstream `mobilevideogpt/model/arch.py::select_frame_in_chunk`).

All patch tokens of a chunk's frames attend to each other with softmax(X·Xᵀ/√D) over the keys; a frame's
score is the attention mass its tokens receive, summed over every query. The k highest-scoring frames
(lowest with `largest=False`) are kept, in temporal order.
"""

from __future__ import annotations

import torch

# Chunks scored per batched matmul: one 8-frame chunk of 196 tokens needs a 1568² fp32 matrix (~10 MB).
CHUNKS_PER_STEP = 4


def frame_attention_scores(features: torch.Tensor) -> torch.Tensor:
    """Attention mass received by each frame.

    features: (C, T, L, D) — C chunks of T frames with L patch tokens each → scores (C, T), fp32.
    Each chunk's scores sum to T·L (every query row of the softmax sums to 1).
    Computed in fp32 whatever the feature dtype, so the choice does not depend on fp16/bf16 rounding.
    """
    c, t, n, d = features.shape  # n = L tokens per frame
    scores = []
    for start in range(0, c, CHUNKS_PER_STEP):
        x = features[start : start + CHUNKS_PER_STEP].reshape(-1, t * n, d).float()
        attn = torch.softmax(x @ x.transpose(1, 2) / d**0.5, dim=-1)  # (c', T·L queries, T·L keys)
        received = attn.sum(dim=1)  # (c', T·L): mass each key token receives over all queries
        scores.append(received.reshape(-1, t, n).sum(dim=-1))
    return torch.cat(scores)


def select_frames(features: torch.Tensor, k: int, largest: bool = True) -> torch.Tensor:
    """Indices of the k selected frames per chunk, ascending.

    features: (C, T, L, D) → (C, k) int64 frame indices in [0, T).
    """
    t = features.shape[1]
    if not 1 <= k <= t:
        raise ValueError(f"Cannot select k={k} frames from chunks of {t} frames")
    scores = frame_attention_scores(features)
    return scores.topk(k, dim=-1, largest=largest).indices.sort(dim=-1).values
