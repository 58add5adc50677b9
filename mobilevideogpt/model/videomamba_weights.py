"""Load upstream VideoMamba weights (e.g. `videomamba_m16_25M_f8_res224.pth`) into `VideoMamba`.

The upstream file is a pickle from a multi-modal pretraining run: a dict whose `model` (or `module`)
entry holds `vision_encoder.*` keys next to a text encoder, projections and heads. It is read with
`weights_only=True` (tensors only, no code), mapped by an explicit rule and loaded strictly: every key the
encoder needs must be present with the right shape, and every dropped key is listed with its reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .state_dicts import diff_state_dicts, preview
from .videomamba import VideoMamba, interpolate_pos_embed, interpolate_temporal_embed

VISION_PREFIX = "vision_encoder."
# Vision keys that exist upstream but not in Mobile-VideoGPT's encoder (built with add_pool_norm=False).
DROPPED_VISION_PREFIXES = ("pool_norm.",)


class WeightLoadError(RuntimeError):
    pass


@dataclass
class LoadReport:
    loaded: list[str] = field(default_factory=list)
    dropped: dict[str, str] = field(default_factory=dict)  # key → reason
    resized: list[str] = field(default_factory=list)

    def summary(self) -> str:
        reasons: dict[str, int] = {}
        for reason in self.dropped.values():
            reasons[reason] = reasons.get(reason, 0) + 1
        parts = [f"loaded {len(self.loaded)} tensors"]
        parts += [f"dropped {n} ({reason})" for reason, n in sorted(reasons.items())]
        if self.resized:
            parts.append(f"interpolated {', '.join(self.resized)}")
        return "; ".join(parts)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors from a .safetensors file or a .pth/.pt/.bin pickle (weights_only), unwrapped from `model`/`module`."""
    path = Path(path)
    if not path.is_file():
        raise WeightLoadError(f"VideoMamba weights not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means the file is unusable
        raise WeightLoadError(f"Cannot read {path} as a tensor-only checkpoint: {err}") from err
    for wrapper in ("model", "module", "state_dict"):
        if isinstance(obj, Mapping) and wrapper in obj and isinstance(obj[wrapper], Mapping):
            obj = obj[wrapper]
    if not isinstance(obj, Mapping):
        raise WeightLoadError(f"{path} does not hold a state dict (got {type(obj).__name__})")
    return dict(obj)


def map_upstream_keys(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Upstream keys → encoder keys. A file with `vision_encoder.*` keys keeps only those (others are the
    text branch / heads of the pretraining model); a bare backbone state dict is taken as is."""
    has_prefix = any(k.startswith(VISION_PREFIX) for k in state)
    mapped: dict[str, torch.Tensor] = {}
    dropped: dict[str, str] = {}
    for key, tensor in state.items():
        if has_prefix and not key.startswith(VISION_PREFIX):
            dropped[key] = "not part of the vision encoder"
            continue
        name = key[len(VISION_PREFIX) :] if has_prefix else key
        if name.startswith(DROPPED_VISION_PREFIXES):
            dropped[key] = "pool_norm is not built (add_pool_norm=False)"
            continue
        mapped[name] = tensor
    return mapped, dropped


def load_upstream_videomamba(
    encoder: VideoMamba, source: str | Path | Mapping[str, torch.Tensor]
) -> LoadReport:
    """Load upstream VideoMamba weights strictly; interpolate position tables when geometry differs."""
    state = read_state_dict(source) if isinstance(source, (str, Path)) else dict(source)
    mapped, dropped = map_upstream_keys(state)
    report = LoadReport(dropped=dropped)

    cfg = encoder.config
    if "pos_embed" in mapped and mapped["pos_embed"].shape[1] != encoder.pos_embed.shape[1]:
        mapped["pos_embed"] = interpolate_pos_embed(mapped["pos_embed"], cfg.grid_size)
        report.resized.append("pos_embed")
    temporal = encoder.temporal_pos_embedding.shape[1]
    if "temporal_pos_embedding" in mapped and mapped["temporal_pos_embedding"].shape[1] != temporal:
        mapped["temporal_pos_embedding"] = interpolate_temporal_embed(mapped["temporal_pos_embedding"], temporal)
        report.resized.append("temporal_pos_embedding")

    diff = diff_state_dicts(encoder.state_dict(), mapped)
    if not diff.ok:
        problems = []
        if diff.missing:
            problems.append(f"missing {len(diff.missing)} keys: {preview(diff.missing)}")
        if diff.unexpected:
            problems.append(f"unexpected vision keys {len(diff.unexpected)}: {preview(diff.unexpected)}")
        if diff.wrong_shape:
            problems.append(f"shape mismatches: {preview(diff.wrong_shape)}")
        hint = ""
        if any(k.endswith(("A_b_log", "D_b")) or "_b." in k for k in diff.missing):
            hint = " (the `_b` tensors belong to the bidirectional scan: was this checkpoint saved without bimamba?)"
        raise WeightLoadError("VideoMamba weights do not match the encoder: " + "; ".join(problems) + hint)

    encoder.load_state_dict(mapped, strict=True)
    report.loaded = sorted(mapped)
    return report

