"""VideoMamba-Middle video encoder (the `vision_tower.vision_encoder` of Mobile-VideoGPT).

Tokens: per-frame 16×16 patches (Conv3d with a temporal kernel of 1) + one CLS token, a spatial position
table shared by all frames and a temporal table added per frame; laid out CLS, then frame-major patches
(1 + 8·196 = 1569 tokens at 224 px). Then `depth` pre-norm residual blocks (add → RMSNorm → bidirectional
Mamba) with the residual stream in fp32, and a final add + RMSNorm. Module and parameter names follow
upstream VideoMamba so its checkpoints load strictly; `clip_decoder` (a distillation head unused at
inference) is kept for exactly that reason.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..engine import rows_cpu
from .mamba import Mamba
from .zero import gathered


@dataclass
class VideoMambaConfig:
    img_size: int = 224
    patch_size: int = 16
    kernel_size: int = 1
    channels: int = 3
    depth: int = 32
    embed_dim: int = 576
    num_frames: int = 8
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    bimamba: bool = True
    drop_path_rate: float = 0.25
    norm_epsilon: float = 1e-5
    residual_in_fp32: bool = True
    clip_output_dim: int = 512
    clip_return_layer: int = 1
    use_checkpoint: bool = False

    @classmethod
    def tiny(cls) -> "VideoMambaConfig":
        """Same 224 px / 16 px patch geometry (14×14 grid, 8 frames), tiny width and depth."""
        return cls(depth=2, embed_dim=32, clip_output_dim=16)

    @property
    def grid_size(self) -> int:
        return self.img_size // self.patch_size

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "VideoMambaConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"Unknown VideoMamba config fields: {unknown}")
        return cls(**d)


class RMSNorm(nn.Module):
    """x / sqrt(mean(x²) + eps) · weight, computed in fp32, returned in the weight's dtype."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight.float()
        return y.to(self.weight.dtype)


def add_norm(
    norm: RMSNorm, hidden: torch.Tensor, residual: torch.Tensor | None, drop_path: nn.Module, residual_in_fp32: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(norm(r), r) for the residual stream r = residual + drop_path(hidden) (hidden alone for the first block), in
    fp32 with `residual_in_fp32`. At CPU inference one compiled pass (`rows_cpu.rms_norm`, as mamba's fused add +
    norm) instead of torch's add, widening and five norm ops: 32 full-size blocks over 8 frames on 2 cores of a Xeon
    with AMX-bf16 took 76 ms of VideoMamba's 0.78 s in those ops."""
    if _fused_add_norm(norm, hidden, residual, drop_path, residual_in_fp32):
        return rows_cpu.rms_norm(hidden, norm.weight, norm.eps, residual, norm.weight.dtype, keep_sum=True)
    residual = hidden if residual is None else residual + drop_path(hidden)
    if residual_in_fp32:
        residual = residual.float()
    return norm(residual), residual


def _fused_add_norm(
    norm: RMSNorm, hidden: torch.Tensor, residual: torch.Tensor | None, drop_path: nn.Module, residual_in_fp32: bool
) -> bool:
    identity = not (drop_path.training and drop_path.p > 0)
    # A weight ZeRO-3 has partitioned away is gathered by the norm module's own forward hooks: take that path.
    whole = norm.weight.shape == hidden.shape[-1:]
    fp32_stream = residual is None or (residual.dtype == torch.float32 and residual.shape == hidden.shape
                                       and residual.is_contiguous())  # fmt: skip
    others = () if residual is None else (residual,)
    return identity and whole and residual_in_fp32 and fp32_stream and rows_cpu.stands_in(hidden, norm.weight, *others)


class DropPath(nn.Module):
    """Stochastic depth per sample (identity in eval mode)."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class PatchEmbed(nn.Module):
    def __init__(self, config: VideoMambaConfig) -> None:
        super().__init__()
        k, p = config.kernel_size, config.patch_size
        self.proj = nn.Conv3d(config.channels, config.embed_dim, kernel_size=(k, p, p), stride=(k, p, p))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) → (B, D, T/k, H/p, W/p)."""
        return self.proj(x)


class Block(nn.Module):
    def __init__(self, config: VideoMambaConfig, drop_path: float) -> None:
        super().__init__()
        self.residual_in_fp32 = config.residual_in_fp32
        self.mixer = Mamba(config.embed_dim, config.d_state, config.d_conv, config.expand, bimamba=config.bimamba)
        self.norm = RMSNorm(config.embed_dim, eps=config.norm_epsilon)
        self.drop_path = DropPath(drop_path)

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        normed, residual = add_norm(self.norm, hidden, residual, self.drop_path, self.residual_in_fp32)
        return self.mixer(normed), residual


class LinearDecoder(nn.Module):
    """CLIP-distillation head from VideoMamba's pretraining; kept so checkpoints load strictly."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.head = nn.Linear(in_dim, out_dim)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.head(x))


class VideoMamba(nn.Module):
    def __init__(self, config: VideoMambaConfig) -> None:
        super().__init__()
        self.config = config
        d = config.embed_dim
        self.patch_embed = PatchEmbed(config)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + config.grid_size**2, d))
        self.temporal_pos_embedding = nn.Parameter(torch.zeros(1, config.num_frames // config.kernel_size, d))
        # Linear decay of stochastic depth; block 0 gets none (upstream shifts the schedule by one).
        steps = max(config.depth - 1, 1)
        dpr = [0.0] + [config.drop_path_rate * i / steps for i in range(config.depth)][:-1]
        self.layers = nn.ModuleList(Block(config, dpr[i]) for i in range(config.depth))
        self.norm = RMSNorm(d, eps=config.norm_epsilon)
        self.clip_decoder = nn.ModuleList(
            LinearDecoder(d, config.clip_output_dim) for _ in range(config.clip_return_layer)
        )
        self.gradient_checkpointing = config.use_checkpoint
        self._init_weights()

    def _init_weights(self) -> None:
        with gathered(self.parameters()):
            self._init_weights_full()

    def _init_weights_full(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                if name.endswith("out_proj"):
                    # Mamba's prenorm-residual rescaling: keeps the residual stream's scale independent of depth.
                    nn.init.kaiming_uniform_(module.weight, a=5**0.5)
                    with torch.no_grad():
                        module.weight /= self.config.depth**0.5
                elif not name.endswith("dt_proj") and not name.endswith("dt_proj_b"):
                    nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None and not getattr(module.bias, "_no_reinit", False):
                    nn.init.zeros_(module.bias)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) frames → (B, 1 + T·gh·gw, D) tokens: CLS, then patches frame by frame."""
        x = self.patch_embed(x.to(self.patch_embed.proj.weight.dtype))
        b, d, t, gh, gw = x.shape
        if t != self.temporal_pos_embedding.shape[1]:
            raise ValueError(
                f"VideoMamba expects {self.temporal_pos_embedding.shape[1] * self.config.kernel_size} frames "
                f"per clip, got {t * self.config.kernel_size}"
            )
        if gh * gw + 1 != self.pos_embed.shape[1]:
            raise ValueError(
                f"VideoMamba expects {self.config.img_size}×{self.config.img_size} frames "
                f"({self.pos_embed.shape[1] - 1} patches), got a {gh}×{gw} patch grid"
            )
        patches = x.permute(0, 2, 3, 4, 1).reshape(b, t, gh * gw, d)
        patches = patches + self.pos_embed[:, None, 1:] + self.temporal_pos_embedding[:, :, None]
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(b, 1, d)
        return torch.cat([cls, patches.reshape(b, t * gh * gw, d)], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, T, H, W) → hidden states (B, 1 + T·gh·gw, D) in the module dtype."""
        hidden, residual = self.embed(x), None
        use_ckpt = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for layer in self.layers:
            if use_ckpt:
                hidden, residual = checkpoint(layer, hidden, residual, use_reentrant=False)
            else:
                hidden, residual = layer(hidden, residual)
        last = self.layers[-1]
        return add_norm(self.norm, hidden, residual, last.drop_path, last.residual_in_fp32)[0]


def interpolate_pos_embed(pos_embed: torch.Tensor, grid_size: int) -> torch.Tensor:
    """Resize a (1, 1 + g², D) spatial table (CLS first) to grid_size² patches, bicubic."""
    old = int(round((pos_embed.shape[1] - 1) ** 0.5))
    if old == grid_size:
        return pos_embed
    cls, grid = pos_embed[:, :1], pos_embed[:, 1:]
    grid = grid.reshape(1, old, old, -1).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=(grid_size, grid_size), mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, grid_size * grid_size, -1).to(pos_embed.dtype)
    return torch.cat([cls, grid], dim=1)


def interpolate_temporal_embed(temporal: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Resize a (1, T, D) temporal table to num_frames rows, linearly."""
    if temporal.shape[1] == num_frames:
        return temporal
    t = F.interpolate(temporal.permute(0, 2, 1).float(), size=num_frames, mode="linear", align_corners=False)
    return t.permute(0, 2, 1).to(temporal.dtype)
