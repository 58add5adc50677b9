"""CLIP ViT image tower (`model.image_vision_tower`): patch features of every context frame.

Keys are `model.image_vision_tower.vision_tower.vision_model.*` as in the published layout, which was
written by transformers 4.x where `CLIPVisionModel` wrapped a `vision_model`. transformers 5 flattened
`CLIPVisionModel` (its keys start at `embeddings.`), so the tower holds it under an explicit
`vision_tower.vision_model` path: names in memory, on disk and in the published file are the same, with no
renaming at load or save time. Built from a config only (no network); the weights come from the
checkpoint or from `loading.py`.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from transformers import CLIPVisionConfig, CLIPVisionModel

from .frozen import FrozenAwareModule

# Frames per CLIP forward, as in the published tower: bounds activation memory for long batches.
CLIP_FRAMES_PER_STEP = 128


class CLIPVisionHolder(nn.Module):
    """Gives transformers 5's flat `CLIPVisionModel` the `vision_model.` key prefix of the published file."""

    def __init__(self, vision_config: CLIPVisionConfig) -> None:
        super().__init__()
        self.vision_model = CLIPVisionModel(vision_config)


class CLIPImageTower(FrozenAwareModule):
    def __init__(self, vision_config: CLIPVisionConfig, select_layer: int = -2, select_feature: str = "patch") -> None:
        super().__init__()
        if select_feature != "patch":
            raise ValueError(
                f"mm_vision_select_feature={select_feature!r} is not supported: the image projector needs the "
                "14×14 patch grid without CLS ('patch')"
            )
        self.select_layer = select_layer
        self.vision_tower = CLIPVisionHolder(vision_config)

    @property
    def config(self) -> CLIPVisionConfig:
        return self.vision_tower.vision_model.config

    @property
    def dtype(self) -> torch.dtype:
        return self.vision_tower.vision_model.embeddings.patch_embedding.weight.dtype

    @property
    def layers_used(self) -> int:
        """Encoder layers that hidden state `select_layer` depends on (hidden state 0 is the embedding output, i
        is layer i's output): 11 of 12 for the published −2, so the last layer is never run."""
        total = len(self.vision_tower.vision_model.encoder.layers)
        index = self.select_layer if self.select_layer >= 0 else total + 1 + self.select_layer
        if not 0 <= index <= total:
            raise ValueError(f"mm_vision_select_layer={self.select_layer} does not exist in a {total}-layer CLIP")
        return index

    def forward(
        self, pixel_values: torch.Tensor, with_scores: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """pixel_values: (N, 3, H, W) CLIP-normalised frames → (N, L, D) patch features (CLS dropped) of
        hidden state `select_layer` (−2: output of the second-to-last encoder layer, no post-layernorm); with
        `with_scores`, (features, (N, L) [CLS]-attention scores) — see `features_and_scores`.

        Runs CLIP's own modules (embeddings, pre-layernorm, encoder layers) only as far as that hidden state: the
        same values as `CLIPVisionModel(..., output_hidden_states=True).hidden_states[select_layer]`."""
        vision = self.vision_tower.vision_model
        layers = vision.encoder.layers[: self.layers_used]
        if with_scores and not layers:
            raise ValueError(
                "a visual-token budget scores patches by [CLS] attention in an encoder layer, but "
                f"mm_vision_select_layer={self.select_layer} uses CLIP's embeddings only"
            )
        features, scores = [], []
        for start in range(0, pixel_values.shape[0], CLIP_FRAMES_PER_STEP):
            batch = pixel_values[start : start + CLIP_FRAMES_PER_STEP].to(self.dtype)
            hidden = vision.pre_layrnorm(vision.embeddings(batch))
            for index, layer in enumerate(layers):
                if with_scores and index == len(layers) - 1:
                    scores.append(cls_attention(layer, hidden))
                hidden = layer(hidden, None)
            features.append(hidden[:, 1:])
        return (torch.cat(features), torch.cat(scores)) if with_scores else torch.cat(features)

    def features_and_scores(
        self, pixel_values: torch.Tensor, with_scores: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(features, scores or None): the scores are (N, L) fp32, the attention the [CLS] query pays each patch in
        the last layer run (the one that writes the features), averaged over heads; each frame's sum to under 1
        (the rest goes to [CLS] itself). What the visual-token budget keeps tokens by."""
        return self(pixel_values, with_scores=True) if with_scores else (self(pixel_values), None)


def cls_attention(layer: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """hidden: (N, 1 + L, D), the input of CLIP encoder `layer` → (N, L) fp32: the softmax attention of the
    [CLS] query over the patch keys in that layer, averaged over its heads (computed for the one query only)."""
    attention = layer.self_attn
    normed = layer.layer_norm1(hidden)
    n, tokens, _ = normed.shape
    heads, head_dim = attention.num_heads, attention.head_dim
    query = attention.q_proj(normed[:, :1]).reshape(n, 1, heads, head_dim).transpose(1, 2).float()
    keys = attention.k_proj(normed).reshape(n, tokens, heads, head_dim).transpose(1, 2).float()
    weights = torch.softmax(query @ keys.transpose(-1, -2) * attention.scale, dim=-1)  # (N, heads, 1, 1 + L)
    return weights.mean(dim=1)[:, 0, 1:]
