"""VideoMamba video tower (`model.vision_tower`): per-frame patch features of one clip per video.

Holds the encoder at attribute `vision_encoder`, so its keys are `model.vision_tower.vision_encoder.*`
as in the published layout.
"""

from __future__ import annotations

import torch

from .frozen import FrozenAwareModule
from .videomamba import VideoMamba, VideoMambaConfig


class VideoMambaTower(FrozenAwareModule):
    def __init__(self, config: VideoMambaConfig) -> None:
        super().__init__()
        self.vision_encoder = VideoMamba(config)

    @property
    def config(self) -> VideoMambaConfig:
        return self.vision_encoder.config

    @property
    def dtype(self) -> torch.dtype:
        return self.vision_encoder.patch_embed.proj.weight.dtype

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """frames: (B, T, 3, H, W) ImageNet-normalised clips, T = the encoder's frame count →
        (B, T, gh·gw, D) patch features per frame (the single CLS token is dropped)."""
        b, t = frames.shape[:2]
        hidden = self.vision_encoder(frames.to(self.dtype).permute(0, 2, 1, 3, 4))  # (B, 1 + T·L, D)
        return hidden[:, 1:].reshape(b, t, -1, hidden.shape[-1])
