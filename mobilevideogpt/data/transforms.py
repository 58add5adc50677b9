"""The two published frame preprocessors (upstream `eval/video_encoding.py::_get_rawvideo_dec`), applied to the same decoded frames.

- VideoMamba: `cv2.resize` to size×size (bilinear, aspect ratio not preserved, as published), ImageNet
  normalisation.
- CLIP: the `CLIPImageProcessor` defaults of openai/clip-vit-base-patch16 (shortest side to `size` with PIL
  bicubic, centre crop, CLIP normalisation), reimplemented with PIL so the result matches transformers'
  processor without depending on its backends.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected (T, H, W, 3) uint8 RGB frames, got shape {frames.shape} dtype {frames.dtype}")
    return frames


def _normalise_to_tensor(images: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """(T, S, S, 3) uint8 → (T, 3, S, S) float32 of (x/255 - mean) / std."""
    scaled = images.astype(np.float32) / np.float32(255.0)
    scaled = (scaled - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(scaled.transpose(0, 3, 1, 2)))


def videomamba_transform(frames: np.ndarray, size: int = 224) -> torch.Tensor:
    """VideoMamba input: (T, H, W, 3) uint8 RGB → (T, 3, size, size) float32, ImageNet-normalised."""
    frames = _check_frames(frames)
    resized = np.stack([cv2.resize(frame, (size, size), interpolation=cv2.INTER_LINEAR) for frame in frames])
    return _normalise_to_tensor(resized, IMAGENET_MEAN, IMAGENET_STD)


def _clip_resize_and_crop(frame: np.ndarray, size: int) -> np.ndarray:
    """Shortest side → `size` (longer side truncated, as transformers computes it), then centre crop."""
    height, width = frame.shape[:2]
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(size * long / short)
    new_height, new_width = (new_long, size) if width <= height else (size, new_long)
    image = Image.fromarray(np.ascontiguousarray(frame))
    resized = np.asarray(image.resize((new_width, new_height), resample=Image.Resampling.BICUBIC))
    top = (new_height - size) // 2
    left = (new_width - size) // 2
    return resized[top : top + size, left : left + size]


def clip_transform(frames: np.ndarray, size: int = 224) -> torch.Tensor:
    """CLIP input: (T, H, W, 3) uint8 RGB → (T, 3, size, size) float32, CLIP-normalised."""
    frames = _check_frames(frames)
    cropped = np.stack([_clip_resize_and_crop(frame, size) for frame in frames])
    return _normalise_to_tensor(cropped, CLIP_MEAN, CLIP_STD)
