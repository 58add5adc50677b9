"""`MobileVideoGPTQwenConfig`: a Qwen2 config plus the multimodal fields of the published checkpoint.

Fields read from the published `config.json` (written by upstream `mobilevideogpt/model/arch.py::initialize_vision_modules` and `train/train.py`): `mm_vision_tower` (VideoMamba weights,
also the switch that builds the towers), `image_mm_vision_tower` (CLIP id), the projector types, CLIP's
select layer/feature and the start/end-token flags. `mm_hidden_size` is written but untrustworthy
(mutated while the published model was built), so it never decides a shape: the tower widths come from
the tower configs.

Our own optional fields (absent from the published file, so their defaults are the published model):
`videomamba_config` (dict; None → VideoMamba-M), `clip_vision_config` (dict; None → CLIP ViT-B/16),
and the token-pipeline geometry `num_frames`, `num_context_images`, `chunk_size`,
`num_select_k_frames_in_chunk`, `topk`. The last two are also accepted as `from_pretrained` keyword
arguments, as the published loader passes them. `visual_token_budget` (None: all) is the visual tokens per
video a model was trained or runs with (`token_budget.py`); a training checkpoint's config records it.
"""

from __future__ import annotations

from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import CLIPVisionConfig, Qwen2Config

from ..constants import CHUNK_SIZE, NUM_CONTEXT_IMAGES, NUM_FRAMES, NUM_SELECT_K_FRAMES_IN_CHUNK
from .projector import ETP_POOL_SIDE, VIDEO_FRAME_POOL_SIDE
from .videomamba import VideoMambaConfig

PUBLISHED_VIDEO_TOWER = "OpenGVLab/VideoMamba/videomamba_m16_25M_f8_res224.pth"
PUBLISHED_IMAGE_TOWER = "openai/clip-vit-base-patch16"

# openai/clip-vit-base-patch16's vision tower; the published config.json does not carry it.
CLIP_VIT_B16: dict[str, Any] = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "image_size": 224,
    "patch_size": 16,
    "num_channels": 3,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "projection_dim": 512,
}

# Qwen2.5-0.5B-Instruct (its published `config.json`): the LLM of the published checkpoint.
QWEN25_05B: dict[str, Any] = {
    "vocab_size": 151936,
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "max_position_embeddings": 32768,
    "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-6,
    "hidden_act": "silu",
    "tie_word_embeddings": True,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "max_window_layers": 21,
    "use_sliding_window": False,
}

SUPPORTED_PROJECTOR_TYPES = ("etp",)


@strict
class MobileVideoGPTQwenConfig(Qwen2Config):
    model_type = "MobileVideoGPT_qwen"

    mm_vision_tower: str | None = PUBLISHED_VIDEO_TOWER
    image_mm_vision_tower: str | None = PUBLISHED_IMAGE_TOWER
    mm_projector_type: str = "etp"
    image_mm_projector_type: str = "etp"
    mm_vision_select_layer: int = -2
    mm_vision_select_feature: str = "patch"
    mm_use_im_start_end: bool = False
    mm_use_im_patch_token: bool = False
    mm_hidden_size: int | None = None
    image_mm_hidden_size: int | None = None
    videomamba_config: dict | None = None
    clip_vision_config: dict | None = None
    num_frames: int = NUM_FRAMES
    num_context_images: int = NUM_CONTEXT_IMAGES
    chunk_size: int = CHUNK_SIZE
    num_select_k_frames_in_chunk: int = NUM_SELECT_K_FRAMES_IN_CHUNK
    topk: bool = True
    visual_token_budget: int | None = None

    @classmethod
    def published(cls, **overrides: Any) -> "MobileVideoGPTQwenConfig":
        """The full-size Mobile-VideoGPT-0.5B configuration (Qwen2.5-0.5B + VideoMamba-M + CLIP ViT-B/16)."""
        return cls(**{**QWEN25_05B, **overrides})

    @property
    def has_vision(self) -> bool:
        """The published rule: the multimodal modules exist iff `mm_vision_tower` is set."""
        return self.mm_vision_tower is not None

    def videomamba(self) -> VideoMambaConfig:
        return VideoMambaConfig.from_dict(self.videomamba_config) if self.videomamba_config else VideoMambaConfig()

    def clip_vision(self) -> CLIPVisionConfig:
        return CLIPVisionConfig(**(self.clip_vision_config or CLIP_VIT_B16))

    @property
    def num_chunks(self) -> int:
        return self.num_frames // self.chunk_size

    @property
    def full_visual_tokens_per_video(self) -> int:
        """Context tokens (144 per frame) + video tokens (49 per chunk): 16·144 + 2·49 = 2402 as published."""
        return self.num_context_images * ETP_POOL_SIDE["image"] ** 2 + self.video_tokens_per_video

    @property
    def video_tokens_per_video(self) -> int:
        """The chunks' tokens (49 each), which a visual-token budget always keeps."""
        return self.num_chunks * ETP_POOL_SIDE["video"] ** 2

    @property
    def min_visual_tokens_per_video(self) -> int:
        """The smallest budget: every video token and one context token per frame (16 + 98 = 114 as published)."""
        return self.video_tokens_per_video + self.num_context_images

    @property
    def visual_tokens_per_video(self) -> int:
        """What the language model receives per video: the budget, else all of them."""
        return self.visual_token_budget or self.full_visual_tokens_per_video

    def validate_token_pipeline(self) -> None:
        """Class validator (run by `@strict` at construction); the model re-runs it after kwargs overrides."""
        check_token_pipeline(self)


def check_token_pipeline(config: MobileVideoGPTQwenConfig) -> None:
    """Reject frame/chunk/k/tower combinations the token pipeline cannot run, naming the fix."""
    if not config.has_vision:
        return
    problems = []
    for field in ("mm_projector_type", "image_mm_projector_type"):
        if getattr(config, field) not in SUPPORTED_PROJECTOR_TYPES:
            problems.append(f"{field}={getattr(config, field)!r} is not supported (only 'etp')")
    if config.mm_vision_select_feature != "patch":
        problems.append(f"mm_vision_select_feature={config.mm_vision_select_feature!r} is not supported (only 'patch')")
    if config.mm_use_im_start_end:
        problems.append("mm_use_im_start_end=true is not supported (the published model uses false)")
    if config.num_frames != config.num_context_images:
        problems.append(
            f"num_frames ({config.num_frames}) must equal num_context_images ({config.num_context_images}): "
            "frames are scored on the CLIP frames and picked from the VideoMamba frames by the same index"
        )
    if config.chunk_size < 1 or config.num_frames % config.chunk_size:
        problems.append(f"num_frames ({config.num_frames}) must be a multiple of chunk_size ({config.chunk_size})")
    k = config.num_select_k_frames_in_chunk
    if not 1 <= k <= config.chunk_size:
        problems.append(f"num_select_k_frames_in_chunk ({k}) must be between 1 and chunk_size ({config.chunk_size})")
    video = config.videomamba()
    if video.kernel_size != 1:
        problems.append(f"videomamba_config.kernel_size must be 1 (one token group per frame), got {video.kernel_size}")
    if (
        config.chunk_size >= 1
        and not config.num_frames % config.chunk_size
        and config.num_chunks * k != video.num_frames
    ):
        problems.append(
            f"num_frames/chunk_size × k = {config.num_chunks} × {k} = {config.num_chunks * k} selected frames, but "
            f"VideoMamba takes clips of exactly {video.num_frames} frames (published: 16/8 × 4 = 8)"
        )
    per_chunk = k * VIDEO_FRAME_POOL_SIDE**2
    if round(per_chunk**0.5) ** 2 != per_chunk:
        problems.append(
            f"each chunk gives k × {VIDEO_FRAME_POOL_SIDE}² = {per_chunk} video tokens, which the video projector "
            "must view as a square grid: k must be a perfect square (1, 4, 9, ...)"
        )
    if video.grid_size < VIDEO_FRAME_POOL_SIDE:
        problems.append(
            f"VideoMamba's {video.grid_size}×{video.grid_size} patch grid is smaller than the "
            f"{VIDEO_FRAME_POOL_SIDE}×{VIDEO_FRAME_POOL_SIDE} per-frame pooling grid"
        )
    budget = config.visual_token_budget
    if budget is not None and not problems:
        low, high = config.min_visual_tokens_per_video, config.full_visual_tokens_per_video
        if isinstance(budget, bool) or not isinstance(budget, int) or not low <= budget <= high:
            problems.append(
                f"visual_token_budget={budget!r} must be a whole number between {low} (every video token and one context token "
                f"per frame) and {high} (all), or null for all"
            )
    if problems:
        raise ValueError("Invalid Mobile-VideoGPT token pipeline:\n  - " + "\n  - ".join(problems))
