"""Tiny Mobile-VideoGPT configurations for tests, the demo and offline checkpoints.

`tiny_config()` keeps the published geometry — 224 px frames, 14×14 patch grids, 16 frames in chunks of
8 with k = 4, so 2402 visual tokens per video — with tiny widths and depths everywhere. Its vocabulary
matches the real Qwen2.5 tokenizer's padded embedding (151,936 rows), so the tokenizer works unchanged;
a hidden size of 32 keeps the tied embedding at ~19 MB in fp32.

`fast_geometry()` gives overrides for unit tests that need many forward passes: 112 px frames (7×7
grids), 4 frames in chunks of 2 with k = 1, i.e. 4·144 + 2·49 = 674 visual tokens per video.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .configuration import MobileVideoGPTQwenConfig
from .videomamba import VideoMambaConfig

TINY_VIDEO_TOWER = "tiny-random-videomamba (weights stored in the checkpoint)"
TINY_IMAGE_TOWER = "tiny-random-clip (weights stored in the checkpoint)"

TINY_QWEN2: dict[str, Any] = {
    "vocab_size": 151936,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 32768,
    "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "use_sliding_window": False,
}

TINY_CLIP: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "image_size": 224,
    "patch_size": 16,
    "num_channels": 3,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "projection_dim": 32,
}


def tiny_config(**overrides: Any) -> MobileVideoGPTQwenConfig:
    """A tiny Mobile-VideoGPT with the published module layout and token geometry."""
    fields = {
        **TINY_QWEN2,
        "mm_vision_tower": TINY_VIDEO_TOWER,
        "image_mm_vision_tower": TINY_IMAGE_TOWER,
        "videomamba_config": VideoMambaConfig.tiny().to_dict(),
        "clip_vision_config": dict(TINY_CLIP),
        "mm_hidden_size": VideoMambaConfig.tiny().embed_dim,
        "image_mm_hidden_size": TINY_CLIP["hidden_size"],
    }
    return MobileVideoGPTQwenConfig(**{**fields, **overrides})


def fast_geometry() -> dict[str, Any]:
    """Config overrides for a cheaper token pipeline: 112 px, 4 frames, chunks of 2, k = 1 (674 tokens)."""
    video = VideoMambaConfig.tiny()
    video.img_size, video.num_frames = 112, 2
    return {
        "num_frames": 4,
        "num_context_images": 4,
        "chunk_size": 2,
        "num_select_k_frames_in_chunk": 1,
        "videomamba_config": video.to_dict(),
        "clip_vision_config": {**TINY_CLIP, "image_size": 112},
    }


def build_tiny_model(seed: int = 0, **overrides: Any):
    """A randomly initialised tiny `MobileVideoGPTQwenForCausalLM` (fp32, eval mode), reproducible by seed."""
    import torch

    from .modeling import MobileVideoGPTQwenForCausalLM

    torch.manual_seed(seed)
    return MobileVideoGPTQwenForCausalLM(tiny_config(**overrides)).eval()


def save_tiny_checkpoint(out_dir: str | Path, seed: int = 0, prepare=None, **overrides: Any) -> Path:
    """Write a tiny random Mobile-VideoGPT + the real Qwen2.5 tokenizer to `out_dir` (safetensors).

    The directory loads like the published checkpoint: `AutoModelForCausalLM.from_pretrained(out_dir)`
    and `AutoTokenizer.from_pretrained(out_dir)` after `import mobilevideogpt`. Every tower weight is
    stored, so nothing is fetched at load time. `prepare(model, tokenizer)`, when given, runs before saving
    (e.g. the demo's text warm-up).
    """
    from transformers import GenerationConfig

    from ..tokenizer import build_qwen25_tokenizer

    out = Path(out_dir)
    model = build_tiny_model(seed, **overrides)
    tokenizer = build_qwen25_tokenizer()
    if prepare is not None:
        prepare(model, tokenizer)
    # Greedy by default; stop at <|im_end|> or <|endoftext|> as Qwen2.5-Instruct does.
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.pad_token_id,
        eos_token_id=[tokenizer.eos_token_id, tokenizer.pad_token_id],
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
