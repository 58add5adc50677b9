"""Both frame preprocessors: shapes, normalisation, geometry, and CLIP parity with transformers."""

from __future__ import annotations

import warnings

import cv2
import numpy as np
import pytest
import torch

from mobilevideogpt.data.transforms import (
    CLIP_MEAN,
    CLIP_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    clip_transform,
    videomamba_transform,
)
from mobilevideogpt.data.video import decode_video


def _flat(colour: tuple[int, int, int], height: int = 120, width: int = 160, frames: int = 2) -> np.ndarray:
    return np.broadcast_to(np.uint8(colour), (frames, height, width, 3)).copy()


@pytest.mark.parametrize("transform", [videomamba_transform, clip_transform])
@pytest.mark.parametrize("size", [(120, 160), (160, 120), (224, 224), (37, 301)])
def test_shapes_and_dtype(transform, size):
    frames = np.random.default_rng(0).integers(0, 256, (3, *size, 3), dtype=np.uint8)
    out = transform(frames)
    assert out.shape == (3, 3, 224, 224) and out.dtype == torch.float32
    assert transform(frames, size=64).shape == (3, 3, 64, 64)


@pytest.mark.parametrize(
    "transform, mean, std",
    [(videomamba_transform, IMAGENET_MEAN, IMAGENET_STD), (clip_transform, CLIP_MEAN, CLIP_STD)],
)
def test_normalisation_of_a_flat_colour(transform, mean, std):
    colour = (255, 0, 128)
    out = transform(_flat(colour))
    for channel in range(3):
        expected = (colour[channel] / 255 - mean[channel]) / std[channel]
        assert torch.allclose(out[:, channel], torch.tensor(expected, dtype=torch.float32), atol=1e-5)


def test_published_normalisation_constants():
    assert IMAGENET_MEAN == (0.485, 0.456, 0.406) and IMAGENET_STD == (0.229, 0.224, 0.225)
    assert CLIP_MEAN == (0.48145466, 0.4578275, 0.40821073)
    assert CLIP_STD == (0.26862954, 0.26130258, 0.27577711)


def test_videomamba_squashes_the_whole_frame_and_clip_crops_the_centre():
    # A wide frame whose outer sixths are white: VideoMamba keeps them (aspect not preserved),
    # CLIP's centre crop (shortest side → 224, crop 224 of 448) cuts them off.
    frames = np.zeros((1, 100, 200, 3), dtype=np.uint8)
    frames[:, :, :33] = 255
    frames[:, :, -33:] = 255
    mamba = videomamba_transform(frames)[0, 0]
    clip = clip_transform(frames)[0, 0]
    white_mamba = (1 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]
    black_clip = (0 - CLIP_MEAN[0]) / CLIP_STD[0]
    assert torch.allclose(mamba[:, :30], torch.tensor(white_mamba), atol=1e-4)
    assert torch.allclose(mamba[:, -30:], torch.tensor(white_mamba), atol=1e-4)
    assert torch.allclose(clip, torch.tensor(black_clip), atol=1e-4)


@pytest.mark.parametrize(
    "bad", [np.zeros((2, 8, 8, 3), np.float32), np.zeros((8, 8, 3), np.uint8), np.zeros((2, 8, 8, 4), np.uint8)]
)
def test_bad_inputs_are_rejected(bad):
    with pytest.raises(ValueError, match="uint8 RGB"):
        videomamba_transform(bad)
    with pytest.raises(ValueError, match="uint8 RGB"):
        clip_transform(bad)


def _hf_clip_processor():
    """transformers' processor with openai/clip-vit-base-patch16's preprocessing settings (no hub access)."""
    transformers = pytest.importorskip("transformers")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return transformers.CLIPImageProcessor(
            do_resize=True,
            size={"shortest_edge": 224},
            resample=3,  # bicubic
            do_center_crop=True,
            crop_size={"height": 224, "width": 224},
            do_rescale=True,
            rescale_factor=1 / 255,
            do_normalize=True,
            image_mean=list(CLIP_MEAN),
            image_std=list(CLIP_STD),
            do_convert_rgb=True,
        )


@pytest.mark.parametrize("size", [(120, 160), (160, 120), (240, 320), (480, 640), (100, 100), (7, 13), (300, 225)])
def test_clip_matches_transformers_clip_image_processor(size, sample_dataset_dir):
    processor = _hf_clip_processor()
    rng = np.random.default_rng(1)
    noise = rng.integers(0, 256, (2, *size, 3), dtype=np.uint8)
    # Natural-looking content too: decoded sample-dataset frames resized to `size`.
    decoded = decode_video(sorted(sample_dataset_dir.glob("squats/*.mp4"))[2], num_frames=2).frames
    smooth = np.stack([cv2.resize(f, (size[1], size[0]), interpolation=cv2.INTER_AREA) for f in decoded])
    for frames in (noise, smooth):
        expected = processor(list(frames), return_tensors="np")["pixel_values"]
        ours = clip_transform(frames).numpy()
        assert ours.shape == expected.shape
        assert np.abs(ours - expected).max() < 1e-4
