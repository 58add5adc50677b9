"""The visual-token budget: how many of a video's visual tokens reach the language model.

At the published geometry a video gives T·144 context tokens (its 16 CLIP frames through the image ETP) and
nC·49 video tokens (its 2 VideoMamba chunks through the video ETP): 2402, most of a prompt's prefill. A budget
of N tokens keeps every video token and N − nC·49 context tokens, spread evenly over the frames (the first
frames take one more when they do not divide). Each frame keeps the tokens CLIP's [CLS] token attends to most
in the layer whose output the projector reads — the "dominant tokens" of VisionZip (Yang et al., CVPR 2025;
FasterVLM, Zhang et al. 2024, prunes by the same [CLS] attention) — in raster order, so the tokens keep their
spatial order and the layout (context tokens frame by frame, then the chunks) stays the published one.

The choice reads nothing but the frame: not the question (a video's tokens and prompt prefix stay cacheable)
and not the other frames (a frame's features and scores can be kept across the overlapping windows of a live
stream). Training and inference run the same selection inside the model. No budget (None) is the published
pipeline, bit for bit.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# A requested budget: a count of tokens, a fraction of the full count (0 < f ≤ 1), ALL, or None (not asked:
# keep what the checkpoint records).
BudgetRequest = int | float | str | None
ALL = "all"


def parse_visual_tokens(text: str | None) -> BudgetRequest:
    """A command line's `--visual-tokens`: "all", a count ("600") or a fraction ("0.25", "25%")."""
    if text is None:
        return None
    value = str(text).strip().lower()
    if value in (ALL, "full"):
        return ALL
    try:
        number = float(value[:-1]) / 100 if value.endswith("%") else float(value)
    except ValueError:
        number = math.nan
    if value.isdigit() and number >= 1:
        return int(value)
    if 0 < number <= 1:  # NaN is neither
        return number
    raise ValueError(
        f"--visual-tokens {text!r} is not a budget: use all, a number of tokens per video (e.g. 600) or a fraction "
        "of them above 0 and at most 1 (e.g. 0.25 or 25%)"
    )


def resolve_budget(request: BudgetRequest, full: int, minimum: int) -> int | None:
    """The budget in tokens per video for `request` (None: all `full` tokens); a ValueError outside
    [`minimum`, `full`] that names both."""
    if request is None or request == ALL:
        return None
    if isinstance(request, bool) or not isinstance(request, (int, float)):
        raise ValueError(f"a visual-token budget is a count, a fraction or {ALL!r}, not {request!r}")
    tokens = request if isinstance(request, int) else round(request * full)
    if not minimum <= tokens <= full:
        raise ValueError(
            f"a budget of {tokens} visual tokens per video is outside what this model can keep: between {minimum} "
            f"(every video token and one context token per frame) and {full} (all)"
        )
    return None if tokens == full else tokens


def describe_budget(budget: int | None, full: int) -> str:
    if budget is None:
        return f"all {full} visual tokens"
    return f"{budget} of {full} visual tokens ({budget / full:.0%})"


def context_tokens_per_frame(budget: int, frames: int, video_tokens: int) -> list[int]:
    """How many context tokens each frame keeps under `budget` tokens per video, `video_tokens` of them
    the chunks' (kept whole)."""
    base, extra = divmod(budget - video_tokens, frames)
    return [base + (frame < extra) for frame in range(frames)]


def pool_scores(scores: torch.Tensor, side: int) -> torch.Tensor:
    """(..., g²) per-patch scores → (..., side²): pooled onto the projector's grid as the projector pools the
    patches (adaptive average pooling, row-major)."""
    *lead, patches = scores.shape
    grid_side = math.isqrt(patches)
    grid = scores.reshape(-1, 1, grid_side, grid_side).float()
    return F.adaptive_avg_pool2d(grid, side).reshape(*lead, side * side)


def keep_context_tokens(tokens: torch.Tensor, scores: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """tokens: (V, T, S, H) context tokens; scores: (V, T, S); counts: per frame → (V, Σ counts, H): each
    frame's `counts[t]` highest-scoring tokens in raster order, frame after frame (ties: the earlier token)."""
    order = scores.argsort(dim=-1, descending=True, stable=True)
    kept = []
    for frame, count in enumerate(counts):
        index = order[:, frame, :count].sort(dim=-1).values
        kept.append(tokens[:, frame].gather(1, index[..., None].expand(-1, -1, tokens.shape[-1]).to(tokens.device)))
    return torch.cat(kept, dim=1)


def budget_for(config, request: BudgetRequest) -> int | None:
    """`resolve_budget` for a `MobileVideoGPTQwenConfig`'s token geometry."""
    return resolve_budget(request, config.full_visual_tokens_per_video, config.min_visual_tokens_per_video)


def set_visual_token_budget(config, request: BudgetRequest) -> None:
    """Make `config` (a `MobileVideoGPTQwenConfig`) run with `request`'s budget; a ValueError when it cannot."""
    config.visual_token_budget = budget_for(config, request)
