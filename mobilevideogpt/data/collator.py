"""Batches dataset items: right-padded ids/labels, an attention mask from the true lengths, stacked videos."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mobilevideogpt.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX


def _placeholder_runs(ids: torch.Tensor) -> int:
    is_placeholder = ids == IMAGE_TOKEN_INDEX
    starts = is_placeholder.clone()
    starts[1:] &= ~is_placeholder[:-1]
    return int(starts.sum())


@dataclass
class VideoSFTCollator:
    """Collates `SupervisedVideoDataset` items for the model.

    Output: `input_ids` (B, L) right-padded with `pad_token_id`; `labels` (B, L) padded with `IGNORE_INDEX`;
    `attention_mask` (B, L) long, 1 on each sample's real tokens (built from lengths: the pad id
    `<|endoftext|>` can also be a real token); `images` and `context_images` (V, T, 3, H, W) for the V samples
    that have a video, in batch order (the v-th video belongs to the v-th sample holding a placeholder), or
    `None` when V = 0. Sequences longer than `model_max_length` are cut; a cut that would remove a video's
    placeholder is an error (the dataset truncates with the visual tokens counted, so it never happens there).
    No placeholder is ever invented for a text-only sample.
    """

    pad_token_id: int
    model_max_length: int

    def __post_init__(self):
        if self.pad_token_id is None or self.pad_token_id < 0:
            raise ValueError(f"pad_token_id must be a token id, got {self.pad_token_id!r}")
        if self.model_max_length <= 0:
            raise ValueError(f"model_max_length must be positive, got {self.model_max_length}")

    @classmethod
    def from_tokenizer(cls, tokenizer, model_max_length: int) -> VideoSFTCollator:
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token; Qwen2.5 uses <|endoftext|>")
        return cls(tokenizer.pad_token_id, model_max_length)

    def __call__(self, instances: Sequence[dict]) -> dict[str, torch.Tensor | None]:
        if not instances:
            raise ValueError("cannot collate an empty batch")
        ids_list, labels_list, videos, contexts = [], [], [], []
        for b, item in enumerate(instances):
            ids = torch.as_tensor(item["input_ids"], dtype=torch.long)[: self.model_max_length]
            labels = torch.as_tensor(item["labels"], dtype=torch.long)[: self.model_max_length]
            if ids.shape != labels.shape:
                raise ValueError(
                    f"batch item {b}: input_ids {tuple(ids.shape)} and labels {tuple(labels.shape)} differ"
                )
            has_video = item.get("images") is not None
            runs = _placeholder_runs(ids)
            if runs != int(has_video):
                raise ValueError(
                    f"batch item {b}: {runs} placeholder run(s) in input_ids (after truncation to "
                    f"{self.model_max_length}) but {'one video' if has_video else 'no video'}; a video sample "
                    "needs exactly one placeholder and a text-only sample none"
                )
            if has_video:
                videos.append(torch.as_tensor(item["images"]))
                contexts.append(torch.as_tensor(item["context_images"]))
            ids_list.append(ids)
            labels_list.append(labels)

        lengths = torch.tensor([len(ids) for ids in ids_list])
        max_len = int(lengths.max())
        batch = len(ids_list)
        input_ids = torch.full((batch, max_len), self.pad_token_id, dtype=torch.long)
        labels = torch.full((batch, max_len), IGNORE_INDEX, dtype=torch.long)
        for b, (ids, lab) in enumerate(zip(ids_list, labels_list, strict=True)):
            input_ids[b, : len(ids)] = ids
            labels[b, : len(lab)] = lab
        attention_mask = (torch.arange(max_len)[None, :] < lengths[:, None]).long()
        return {
            "input_ids": input_ids,
            "labels": labels,
            "attention_mask": attention_mask,
            "images": _stack(videos, "images"),
            "context_images": _stack(contexts, "context_images"),
        }


def _stack(frames: list[torch.Tensor], name: str) -> torch.Tensor | None:
    """(T, 3, H, W) per video → (V, T, 3, H, W)."""
    if not frames:
        return None
    shapes = {tuple(f.shape) for f in frames}
    if len(shapes) > 1:
        raise ValueError(f"videos in one batch must share a shape; got {name} shapes {sorted(shapes)}")
    return torch.stack(frames)
