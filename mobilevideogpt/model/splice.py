"""Splicing visual embeddings into token sequences.

A video's slot in `input_ids` is one `IMAGE_TOKEN_INDEX` (-200) placeholder, or a run of consecutive
placeholders (the published inference writes 16); each run takes the next video's visual tokens, in
batch order. Per sample: embeddings = text before ‖ visual ‖ text after, labels IGNORE over the visual
span, then all samples are padded to one length on the requested side:

- "right" for training (labels line up with the collator's right padding),
- "left" for generation, so every sample's last position is a real token and new tokens follow it.

Only true tokens (attention_mask 1) are kept before splicing, so the result does not depend on how the
input was padded, and position ids count true tokens only (0 on padding).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from ..constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX

PaddingSide = Literal["left", "right"]


@dataclass
class SplicedBatch:
    inputs_embeds: torch.Tensor  # (B, N, H)
    attention_mask: torch.Tensor  # (B, N) int64, 1 on true tokens
    position_ids: torch.Tensor  # (B, N) int64
    labels: torch.Tensor | None  # (B, N) or None


def placeholder_runs(ids: torch.Tensor) -> list[tuple[int, int]]:
    """[start, end) of every run of consecutive placeholders in a 1-D id sequence."""
    is_slot = (ids == IMAGE_TOKEN_INDEX).tolist()
    runs, start = [], None
    for i, slot in enumerate(is_slot + [False]):
        if slot and start is None:
            start = i
        elif not slot and start is not None:
            runs.append((start, i))
            start = None
    return runs


def true_tokens_mask(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """(B, L) bool: which positions hold true tokens (all of them without a mask)."""
    if attention_mask is None:
        return torch.ones_like(input_ids, dtype=torch.bool)
    if attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"attention_mask {tuple(attention_mask.shape)} does not match input_ids {tuple(input_ids.shape)}"
        )
    return attention_mask.bool()


def count_video_slots(input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> list[int]:
    """Number of placeholder runs (video slots) among each sample's true tokens."""
    keep = true_tokens_mask(input_ids, attention_mask)
    return [len(placeholder_runs(ids[k])) for ids, k in zip(input_ids, keep, strict=True)]


def splice_sample(
    text_embeds: torch.Tensor,
    ids: torch.Tensor,
    labels: torch.Tensor | None,
    visual: list[torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One sample's true tokens with each placeholder run replaced by the matching visual tokens.

    text_embeds: (n, H); ids, labels: (n,); visual: one (N_v, H) tensor per run → (n', H), (n',).
    """
    runs = placeholder_runs(ids)
    embeds, labs, prev = [], [], 0
    for (start, end), tokens in zip(runs, visual, strict=True):
        embeds += [text_embeds[prev:start], tokens.to(text_embeds.dtype)]
        if labels is not None:
            labs += [labels[prev:start], labels.new_full((tokens.shape[0],), IGNORE_INDEX)]
        prev = end
    embeds.append(text_embeds[prev:])
    if labels is not None:
        labs.append(labels[prev:])
    return torch.cat(embeds), (torch.cat(labs) if labels is not None else None)


def pad_spliced(
    embeds: list[torch.Tensor], labels: list[torch.Tensor] | None, padding_side: PaddingSide
) -> SplicedBatch:
    """Stack variable-length samples, padding embeddings with zeros and labels with IGNORE."""
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    batch, width = len(embeds), max(e.shape[0] for e in embeds)
    ref = embeds[0]
    out = ref.new_zeros(batch, width, ref.shape[-1])
    mask = torch.zeros(batch, width, dtype=torch.long, device=ref.device)
    positions = torch.zeros(batch, width, dtype=torch.long, device=ref.device)
    out_labels = (
        torch.full((batch, width), IGNORE_INDEX, dtype=torch.long, device=ref.device) if labels is not None else None
    )
    for i, e in enumerate(embeds):
        n = e.shape[0]
        span = slice(width - n, width) if padding_side == "left" else slice(0, n)
        out[i, span] = e
        mask[i, span] = 1
        positions[i, span] = torch.arange(n, device=ref.device)
        if out_labels is not None:
            out_labels[i, span] = labels[i]
    return SplicedBatch(out, mask, positions, out_labels)


def splice_visual_tokens(
    input_ids: torch.Tensor,
    embed_tokens: Callable[[torch.Tensor], torch.Tensor],
    visual_tokens: torch.Tensor | list[torch.Tensor] | None,
    attention_mask: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    padding_side: PaddingSide = "right",
) -> SplicedBatch:
    """Replace every placeholder run with the next video's visual tokens.

    input_ids: (B, L) with placeholder runs; attention_mask: (B, L) 1 on true tokens (any padding side);
    labels: (B, L) or None; visual_tokens: (V, N, H) or V tensors (N_v, H), V = total number of runs in
    the batch, in batch order → SplicedBatch padded on `padding_side`.
    """
    keep = true_tokens_mask(input_ids, attention_mask)
    slots = count_video_slots(input_ids, keep)
    videos = [] if visual_tokens is None else list(visual_tokens)
    if sum(slots) != len(videos):
        raise ValueError(
            f"input_ids hold {sum(slots)} video placeholder run(s) (per sample: {slots}) but {len(videos)} "
            "video(s) were given: pass one video in `images`/`context_images` for each run of "
            f"IMAGE_TOKEN_INDEX ({IMAGE_TOKEN_INDEX}) placeholders, in batch order"
        )
    # Placeholders and padding get a valid id for the lookup; their embeddings are dropped below.
    text_embeds = embed_tokens(input_ids.masked_fill(~keep | (input_ids == IMAGE_TOKEN_INDEX), 0))
    embeds, labs, used = [], [], 0
    for i, n_slots in enumerate(slots):
        sample_labels = labels[i][keep[i]] if labels is not None else None
        e, lab = splice_sample(
            text_embeds[i][keep[i]], input_ids[i][keep[i]], sample_labels, videos[used : used + n_slots]
        )
        used += n_slots
        embeds.append(e)
        labs.append(lab)
    return pad_spliced(embeds, labs if labels is not None else None, padding_side)
