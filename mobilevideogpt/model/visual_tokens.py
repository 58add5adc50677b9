"""Video → visual tokens, step by step as published (upstream `mobilevideogpt/model/arch.py::encode_videos_by_seletive_frames`, `project`).

For each video (T = 16 frames, chunks of 8, k = 4 at the published geometry):

1. CLIP patch features of all T context frames                      (V, T, 196, Dc)
2. split into chunks and score frames by attention mass, top-k       (V, nC, k) indices, ascending
3. gather the same frame indices from the VideoMamba frames          (V, nC·k = 8, 3, H, W)
4. VideoMamba over the 8 selected frames as ONE clip, CLS dropped    (V, 8, 196, Dv)
5. per-frame adaptive 14×14 → 7×7 pooling                            (V, 8, 49, Dv)
6. regroup per chunk: its k frames' tokens, frame-major              (V·nC, k·49 = 196, Dv)
7. video ETP                                                         (V·nC, 49, H)
8. image ETP on every context frame                                  (V·T, 144, H)
9. merge: all context tokens first (frame 0..T-1), then the chunks   (V, T·144 + nC·49 = 2402, H)

With a visual-token budget N (`token_budget.py`), step 9 keeps, of each frame's 144 context tokens, the
ones CLIP's [CLS] attends to most (scores from step 1, pooled onto the 12×12 grid)   (V, N, H)
"""

from __future__ import annotations

import torch

from .clip import CLIPImageTower
from .frame_selection import select_frames
from .projector import EfficientTokenProjector, pool_frame_tokens
from .token_budget import context_tokens_per_frame, keep_context_tokens, pool_scores
from .video_tower import VideoMambaTower


def check_video_inputs(
    images: torch.Tensor, context: torch.Tensor, chunk_size: int, k: int, clip_frames: int, context_name: str
) -> None:
    """Shape checks with messages that say what the pipeline expects instead of failing in a reshape.

    `context` is either the CLIP frames (V, T, 3, H, W) or their CLIP patch features (V, T, L, D)."""
    if images.ndim != 5 or images.shape[2] != 3:
        raise ValueError(f"`images` must be (videos, frames, 3, H, W), got {tuple(images.shape)}")
    if context_name == "context_images" and (context.ndim != 5 or context.shape[2] != 3):
        raise ValueError(f"`context_images` must be (videos, frames, 3, H, W), got {tuple(context.shape)}")
    if context_name == "clip_features" and context.ndim != 4:
        raise ValueError(f"`clip_features` must be (videos, frames, patches, width), got {tuple(context.shape)}")
    if images.shape[:2] != context.shape[:2]:
        raise ValueError(
            f"`images` {tuple(images.shape)} and `{context_name}` {tuple(context.shape)} must have the same "
            f"number of videos and frames: frames are picked from `images` by their scores on `{context_name}`"
        )
    frames = images.shape[1]
    if frames % chunk_size:
        raise ValueError(f"{frames} frames per video cannot be split into chunks of {chunk_size}")
    if frames // chunk_size * k != clip_frames:
        raise ValueError(
            f"{frames} frames in chunks of {chunk_size} with k={k} select {frames // chunk_size * k} frames, "
            f"but the video tower takes clips of exactly {clip_frames} frames"
        )


def split_chunks(x: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """(V, T, ...) → (V, T/chunk_size, chunk_size, ...), consecutive frames per chunk."""
    return x.reshape(x.shape[0], x.shape[1] // chunk_size, chunk_size, *x.shape[2:])


def gather_selected_frames(frames: torch.Tensor, indices: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """frames: (V, T, C, H, W); indices: (V, nC, k) frame indices within each chunk →
    (V, nC·k, C, H, W), chunk 0's frames first, each chunk's in ascending order."""
    chunks = split_chunks(frames, chunk_size)  # (V, nC, cs, C, H, W)
    index = indices[(...,) + (None,) * (frames.ndim - 2)].expand(*indices.shape, *frames.shape[2:])
    picked = torch.gather(chunks, 2, index.to(frames.device))
    return picked.flatten(1, 2)


def regroup_per_chunk(frame_tokens: torch.Tensor, num_chunks: int) -> torch.Tensor:
    """(V, nC·k, n, D) → (V·nC, k·n, D): each chunk's k frames' n tokens, frame-major."""
    v, f, n, d = frame_tokens.shape
    return frame_tokens.reshape(v * num_chunks, (f // num_chunks) * n, d)


def merge_visual_tokens(
    context_tokens: torch.Tensor, video_tokens: torch.Tensor, context_counts: list[int] | None = None,
    context_scores: torch.Tensor | None = None,
) -> torch.Tensor:
    """context_tokens: (V, T, 144, H); video_tokens: (V, nC, 49, H) → (V, T·144 + nC·49, H), context first.

    With `context_counts` (per frame) and `context_scores` (V, T, 144), each frame keeps only its
    `context_counts[t]` highest-scoring context tokens → (V, Σ counts + nC·49, H)."""
    context = (
        context_tokens.flatten(1, 2)
        if context_counts is None
        else keep_context_tokens(context_tokens, context_scores, context_counts)
    )
    return torch.cat([context, video_tokens.flatten(1, 2)], dim=1)


def video_visual_tokens(
    images: torch.Tensor,
    context_images: torch.Tensor | None,
    *,
    clip_tower: CLIPImageTower,
    video_tower: VideoMambaTower,
    image_projector: EfficientTokenProjector,
    video_projector: EfficientTokenProjector,
    chunk_size: int,
    k: int,
    largest: bool = True,
    clip_features: torch.Tensor | None = None,
    clip_scores: torch.Tensor | None = None,
    budget: int | None = None,
) -> torch.Tensor:
    """images: (V, T, 3, H, W) VideoMamba frames; context_images: (V, T, 3, H', W') CLIP frames →
    (V, T·144 + (T/chunk_size)·49, LLM hidden) visual tokens per video, or (V, `budget`, hidden) with a budget.

    `clip_features` (V, T, L, Dc), the `clip_tower` output of each context frame computed earlier (e.g. kept
    for frames shared by overlapping windows of a stream), replaces step 1; pass it instead of `context_images`,
    with a budget together with its `clip_scores` (V, T, L) (`CLIPImageTower.features_and_scores`).
    """
    if (context_images is None) == (clip_features is None):
        raise ValueError("Pass exactly one of `context_images` (CLIP frames) and `clip_features` (their features)")
    if budget is not None and clip_features is not None and clip_scores is None:
        raise ValueError("With a visual-token budget, pass `clip_scores` beside `clip_features` (they choose the tokens)")
    context, name = (context_images, "context_images") if clip_features is None else (clip_features, "clip_features")
    check_video_inputs(images, context, chunk_size, k, video_tower.config.num_frames, name)
    v, t = context.shape[:2]
    num_chunks = t // chunk_size

    if clip_features is None:
        context_features, clip_scores = clip_tower.features_and_scores(
            context_images.flatten(0, 1), with_scores=budget is not None
        )  # (V·T, L, Dc), (V·T, L)
        context_features = context_features.reshape(v, t, *context_features.shape[1:])
    else:
        context_features = clip_features
    chunk_features = split_chunks(context_features, chunk_size).flatten(0, 1)  # (V·nC, cs, L, Dc)
    indices = select_frames(chunk_features, k, largest=largest).reshape(v, num_chunks, k)

    clip = gather_selected_frames(images, indices, chunk_size)  # (V, nC·k, 3, H, W)
    frame_tokens = pool_frame_tokens(video_tower(clip))  # (V, nC·k, 49, Dv)
    video_tokens = video_projector(regroup_per_chunk(frame_tokens, num_chunks).to(video_projector.dtype))
    context_tokens = image_projector(context_features.flatten(0, 1).to(image_projector.dtype))
    counts = scores = None
    if budget is not None:
        counts = context_tokens_per_frame(budget, t, num_chunks * video_tokens.shape[1])
        scores = pool_scores(clip_scores.reshape(v, t, -1), image_projector.pool_side)
    return merge_visual_tokens(
        context_tokens.reshape(v, t, *context_tokens.shape[1:]),
        video_tokens.reshape(v, num_chunks, *video_tokens.shape[1:]),
        counts,
        scores,
    )
