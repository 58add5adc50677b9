"""Efficient Token Projector (ETP) and the per-frame pooling of VideoMamba features.

ETP (upstream `mobilevideogpt/model/multimodal_projector/builder.py::ETProjector`): a per-token MLP to the LLM width, the token sequence viewed as a square grid
(row-major, channels first), adaptive average pooling to a fixed grid, and a depthwise 3×3 convolution
added back as a positional encoding (PEG). Module names (`mlp.mlp.{0,2}`, `dwn`, `peg.peg.0`) follow
the published state dict.

Which pooled grid a projector uses is given explicitly by its `kind` — the published code chose it from
the input width (576 → video), which would break tiny test configs with other widths.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

ProjectorKind = Literal["video", "image"]

# Pooled grid side of each projector: video chunks → 7×7 = 49 tokens, CLIP frames → 12×12 = 144 tokens.
ETP_POOL_SIDE: dict[str, int] = {"video": 7, "image": 12}
# VideoMamba's 14×14 patch grid is pooled per frame to 7×7 before regrouping into chunks (upstream `arch.py::encode_videos_by_seletive_frames`).
VIDEO_FRAME_POOL_SIDE = 7


def square_side(num_tokens: int, what: str) -> int:
    """Side of the square grid that `num_tokens` row-major tokens form; a clear error if they do not."""
    side = math.isqrt(num_tokens)
    if side * side != num_tokens:
        raise ValueError(f"{what}: {num_tokens} tokens do not form a square grid (need a perfect square)")
    return side


def tokens_to_grid(x: torch.Tensor) -> torch.Tensor:
    """(N, S, C) row-major tokens → (N, C, √S, √S)."""
    n, s, c = x.shape
    side = square_side(s, "projector input")
    return x.transpose(1, 2).reshape(n, c, side, side)


def grid_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) → (N, H·W, C), row-major."""
    return x.flatten(2).transpose(1, 2)


def pool_frame_tokens(features: torch.Tensor, side: int = VIDEO_FRAME_POOL_SIDE) -> torch.Tensor:
    """Adaptive average pooling of each frame's patch grid.

    features: (..., L, D) with L = g² patch tokens per frame, row-major → (..., side², D).
    For VideoMamba's 14×14 grid and side 7 this is an exact non-overlapping 2×2 mean.
    """
    *lead, num_tokens, dim = features.shape
    grid = tokens_to_grid(features.reshape(-1, num_tokens, dim))
    pooled = F.adaptive_avg_pool2d(grid, side)
    return grid_to_tokens(pooled).reshape(*lead, side * side, dim)


class DenseMLP(nn.Module):
    """Linear → GELU (exact erf) → Linear, applied per token."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


class PositionalEncodingGenerator(nn.Module):
    """Depthwise 3×3 convolution with a residual connection: P ← DWConv(P) + P."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.peg = nn.Sequential(nn.Conv2d(dim, dim, kernel_size=3, stride=1, padding=1, bias=True, groups=dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, C, H, W) → (N, C, H, W)."""
        return self.peg(x) + x


class EfficientTokenProjector(nn.Module):
    """ETP: (N, S, in_dim) with S a perfect square → (N, side², out_dim), side = 7 (video) or 12 (image)."""

    def __init__(self, in_dim: int, out_dim: int, kind: ProjectorKind) -> None:
        super().__init__()
        if kind not in ETP_POOL_SIDE:
            raise ValueError(f"Unknown projector kind {kind!r}; expected one of {sorted(ETP_POOL_SIDE)}")
        self.pool_side = ETP_POOL_SIDE[kind]
        self.mlp = DenseMLP(in_dim, out_dim)
        self.dwn = nn.AdaptiveAvgPool2d(self.pool_side)
        self.peg = PositionalEncodingGenerator(out_dim)

    @property
    def dtype(self) -> torch.dtype:
        return self.mlp.mlp[0].weight.dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, S, in_dim) → (N, pool_side², out_dim).

        For video chunks the S = 4·49 tokens are 4 frames' pooled tokens laid out frame-major, so the
        14×14 "grid" mixes frames (rows 0-2 and half of row 3 belong to the first frame): this reshape
        is what the published checkpoint was trained with and is reproduced exactly.
        """
        grid = tokens_to_grid(self.mlp(x))
        return grid_to_tokens(self.peg(self.dwn(grid)))
