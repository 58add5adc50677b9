"""Loading Mobile-VideoGPT checkpoints (`from_pretrained`): published layout, tower weights, strict report.

On top of transformers' loader:

1. `vocab_size` is taken from the checkpoint's `model.embed_tokens.weight` rows (the published model may
   have been resized to its tokenizer length), read from the safetensors header before the model is built.
2. The key report is strict: unexpected keys, and missing keys outside the known-optional groups, fail
   with the list of keys. Known-optional (the published model loads both towers from their own sources, upstream `arch.py` /
   `multimodal_encoder/clip_encoder.py`):
   - CLIP (`model.image_vision_tower.*`): the published checkpoint very likely lacks it; it is loaded with
     `CLIPVisionModel.from_pretrained` from `clip_path=` or `$MOBILEVIDEOGPT_CLIP_PATH` or
     `config.image_mm_vision_tower` (hub id or local dir; `HF_HUB_OFFLINE` and the hub cache apply).
   - VideoMamba (`model.vision_tower.vision_encoder.*`): loaded from the upstream `.pth` named by
     `videomamba_path=` or `$MOBILEVIDEOGPT_VIDEOMAMBA_PATH` or `config.mm_vision_tower`
     ("owner/repo/file.pth" on the hub, or a local file), strictly, via `load_upstream_videomamba`.
   - `lm_head.weight` with tied embeddings (transformers ties it and does not report it missing).
   A tower only partly present in the checkpoint is loaded whole from its source (the towers were
   frozen in every training stage, so the sources hold the same weights).
   If a source cannot be reached, one error names every missing part and how to provide it.

Under DeepSpeed ZeRO-3 the tower parameters are gathered before they are written.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from transformers import CLIPVisionModel, PretrainedConfig
from transformers.utils import cached_file

from ..errors import first_line
from .state_dicts import diff_state_dicts, preview
from .videomamba_weights import WeightLoadError, load_upstream_videomamba
from .zero import gathered

logger = logging.getLogger(__name__)

CLIP_PREFIX = "model.image_vision_tower."
VIDEOMAMBA_PREFIX = "model.vision_tower.vision_encoder."
EMBED_KEY = "model.embed_tokens.weight"
CLIP_PATH_ENV = "MOBILEVIDEOGPT_CLIP_PATH"
VIDEOMAMBA_PATH_ENV = "MOBILEVIDEOGPT_VIDEOMAMBA_PATH"
UPSTREAM_VIDEOMAMBA_FILE = "videomamba_m16_25M_f8_res224.pth"
# Keyword arguments of `from_pretrained` that locate checkpoint files; reused to peek at the weights.
DOWNLOAD_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder", "proxies")


class CheckpointLoadError(RuntimeError):
    pass


def load_pretrained(hf_from_pretrained: Callable, name_or_path: str | os.PathLike, *model_args: Any, **kwargs: Any):
    """`hf_from_pretrained` (transformers' classmethod, bound) + vocab alignment + tower weights + strict check.

    Extra kwargs: `clip_path`, `videomamba_path` (sources for tower weights absent from the checkpoint).
    Returns the model, or (model, loading_info) with `output_loading_info=True`; loading_info gains
    `tower_sources`: which source filled which tower.
    """
    # The published loader passes k / topk explicitly; None means "as the checkpoint's config says".
    for name in ("num_select_k_frames_in_chunk", "topk"):
        if name in kwargs and kwargs[name] is None:
            del kwargs[name]
    clip_path = kwargs.pop("clip_path", None)
    videomamba_path = kwargs.pop("videomamba_path", None)
    want_info = kwargs.pop("output_loading_info", False)
    download = {k: kwargs[k] for k in DOWNLOAD_KWARGS if k in kwargs}
    rows = checkpoint_embedding_rows(name_or_path, download)
    if rows is not None:
        if isinstance(kwargs.get("config"), PretrainedConfig):
            kwargs["config"] = copy.deepcopy(kwargs["config"])
            kwargs["config"].vocab_size = rows
        else:
            kwargs["vocab_size"] = rows

    # transformers' own load report would list absent tower weights as "newly initialized"; it is held
    # back, replaced by the strict report below, and attached to transformers' error if loading fails.
    with held_back_load_report() as held:
        try:
            model, info = hf_from_pretrained(name_or_path, *model_args, output_loading_info=True, **kwargs)
        except RuntimeError as err:
            if not held:
                raise
            raise CheckpointLoadError(f"{err}\n" + "\n".join(held)) from err
    info["tower_sources"] = complete_and_check(model, info, name_or_path, clip_path, videomamba_path)
    return (model, info) if want_info else model


def checkpoint_embedding_rows(name_or_path: str | os.PathLike, download: dict[str, Any]) -> int | None:
    """Rows of `model.embed_tokens.weight` from the safetensors header, or None when not determinable
    (no safetensors file, unreachable hub: transformers then reports the real problem)."""
    from safetensors import safe_open

    lookup = dict(download, _raise_exceptions_for_missing_entries=False, _raise_exceptions_for_connection_errors=False)
    try:
        index = cached_file(name_or_path, "model.safetensors.index.json", **lookup)
        if index is not None:
            shard = json.loads(Path(index).read_text())["weight_map"].get(EMBED_KEY)
            path = cached_file(name_or_path, shard, **lookup) if shard else None
        else:
            path = cached_file(name_or_path, "model.safetensors", **lookup)
        if path is None:
            return None
        with safe_open(path, framework="pt") as f:
            return f.get_slice(EMBED_KEY).get_shape()[0] if EMBED_KEY in f.keys() else None
    except (OSError, ValueError, KeyError):
        return None


class _LoadReportFilter(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self.held: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "LOAD REPORT" in message:
            self.held.append(message)
            return False
        return True


@contextlib.contextmanager
def held_back_load_report() -> Iterator[list[str]]:
    """Collect (instead of printing) transformers' "LOAD REPORT" warnings issued inside the block."""
    target = logging.getLogger("transformers.modeling_utils")
    report_filter = _LoadReportFilter()
    target.addFilter(report_filter)
    try:
        yield report_filter.held
    finally:
        target.removeFilter(report_filter)


def complete_and_check(
    model: nn.Module,
    info: dict[str, Any],
    name_or_path: str | os.PathLike,
    clip_path: str | None,
    videomamba_path: str | None,
) -> dict[str, str]:
    """Fill towers missing from the checkpoint and fail on any other key problem. Returns {tower: source}."""
    missing = set(info.get("missing_keys", ()))
    unexpected = sorted(info.get("unexpected_keys", ()))
    clip_missing = sorted(k for k in missing if k.startswith(CLIP_PREFIX))
    video_missing = sorted(k for k in missing if k.startswith(VIDEOMAMBA_PREFIX))
    other_missing = sorted(missing - set(clip_missing) - set(video_missing))
    if unexpected or other_missing:
        problems = []
        if other_missing:
            problems.append(f"missing {len(other_missing)} key(s): {preview(other_missing)}")
        if unexpected:
            problems.append(f"unexpected {len(unexpected)} key(s): {preview(unexpected)}")
        raise CheckpointLoadError(
            f"{name_or_path} does not match the Mobile-VideoGPT layout: " + "; ".join(problems) + ". "
            "Only the CLIP / VideoMamba tower weights (and a tied lm_head) may be absent from a checkpoint."
        )

    config = model.config
    sources: dict[str, str] = {}
    errors: list[str] = []
    if clip_missing:
        source = clip_path or os.environ.get(CLIP_PATH_ENV) or config.image_mm_vision_tower
        try:
            load_clip_weights(model.model.image_vision_tower, source)
            sources["clip"] = source
        except CheckpointLoadError as err:
            errors.append(
                f"CLIP image tower ({len(clip_missing)} tensors under {CLIP_PREFIX}*): {err}. Provide a CLIP "
                f"model with from_pretrained(..., clip_path=DIR_OR_HUB_ID) or {CLIP_PATH_ENV}=/dir (e.g. a local "
                "copy of openai/clip-vit-base-patch16)"
            )
    if video_missing:
        source = videomamba_path or os.environ.get(VIDEOMAMBA_PATH_ENV) or config.mm_vision_tower
        try:
            load_videomamba_weights(model.model.vision_tower.vision_encoder, source)
            sources["videomamba"] = source
        except CheckpointLoadError as err:
            errors.append(
                f"VideoMamba video tower ({len(video_missing)} tensors under {VIDEOMAMBA_PREFIX}*): {err}. "
                f"Provide the upstream weights with from_pretrained(..., videomamba_path=FILE) or "
                f"{VIDEOMAMBA_PATH_ENV}=/file.pth ({UPSTREAM_VIDEOMAMBA_FILE} from OpenGVLab/VideoMamba)"
            )
    if errors:
        raise CheckpointLoadError(
            f"{name_or_path} lacks tower weights that could not be loaded:\n  - " + "\n  - ".join(errors)
        )
    info["missing_keys"] = missing - set(clip_missing) - set(video_missing)
    return sources


def load_clip_weights(tower: nn.Module, source: str | None) -> None:
    """Copy a CLIP vision model's weights (hub id or local dir) into `tower.vision_tower.vision_model`."""
    if not source:
        raise CheckpointLoadError("no source configured (config.image_mm_vision_tower is empty)")
    target = tower.vision_tower.vision_model
    # The text half of openai's CLIP checkpoint is expected to be unused: its load report is held back.
    with held_back_load_report() as held:
        try:
            clip, info = CLIPVisionModel.from_pretrained(source, dtype=torch.float32, output_loading_info=True)
        except (OSError, ValueError, RuntimeError) as err:
            detail = "".join(f"\n{report}" for report in held)
            raise CheckpointLoadError(
                f"cannot load a CLIP vision model from {source!r} ({first_line(err)}){detail}"
            ) from err
    if info["missing_keys"]:
        raise CheckpointLoadError(f"{source!r} lacks CLIP vision weights: {preview(sorted(info['missing_keys']))}")
    with gathered(clip.parameters(), modifier_rank=None):
        state = {k: v.detach().clone() for k, v in clip.state_dict().items()}
    with gathered(target.parameters(), modifier_rank=0):
        expected = target.state_dict()
        check_same_layout(expected, state, f"CLIP from {source!r}")
        target.load_state_dict(state, strict=True)
    logger.info("CLIP image tower: loaded %d tensors from %s", len(state), source)


def load_videomamba_weights(encoder: nn.Module, source: str | None) -> None:
    """Load upstream VideoMamba weights from a local file or an "owner/repo/file" hub path."""
    if not source:
        raise CheckpointLoadError("no source configured (config.mm_vision_tower is empty)")
    path = resolve_videomamba_file(source)
    with gathered(encoder.parameters(), modifier_rank=0):
        try:
            report = load_upstream_videomamba(encoder, path)
        except WeightLoadError as err:
            raise CheckpointLoadError(f"{path}: {err}") from err
    logger.info("VideoMamba video tower from %s: %s", path, report.summary())


def resolve_videomamba_file(source: str) -> Path:
    """A local file, or `[hf://]owner/repo[/path/in/repo.pth]` fetched through the hub cache."""
    local = Path(source).expanduser()
    if local.is_file():
        return local
    if local.is_dir():
        raise CheckpointLoadError(f"{source!r} is a directory; point at the VideoMamba .pth / .safetensors file")
    if os.path.isabs(source) or source.startswith((".", "~")):
        raise CheckpointLoadError(f"file {source!r} does not exist")
    parts = source.removeprefix("hf://").split("/")
    if len(parts) == 2:
        # A bare repo id: the published training script appended this file name to it.
        parts.append(UPSTREAM_VIDEOMAMBA_FILE)
    if len(parts) < 3:
        raise CheckpointLoadError(f"{source!r} is neither a local file nor an 'owner/repo/file' hub path")
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id="/".join(parts[:2]), filename="/".join(parts[2:])))
    except Exception as err:  # noqa: BLE001 - hub errors (offline, missing, auth) all mean "not reachable"
        raise CheckpointLoadError(f"cannot fetch {source!r} from the hub ({first_line(err)})") from err


def check_same_layout(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor], what: str) -> None:
    diff = diff_state_dicts(expected, state)
    if not diff.ok:
        raise CheckpointLoadError(
            f"{what} does not match the configured tower (clip_vision_config): missing {preview(diff.missing)}; "
            f"unexpected {preview(diff.unexpected)}; shape mismatches {preview(diff.wrong_shape)}"
        )
