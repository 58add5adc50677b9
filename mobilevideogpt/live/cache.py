"""Model inputs for a window, with per-frame work shared by overlapping windows.

Consecutive windows of a plan sample the same frames where they overlap (12 of 16 at the default 8 s window
and 2 s stride). Everything computed per frame is therefore kept by frame number: both preprocessings
(VideoMamba's resize + ImageNet normalisation, CLIP's resize + crop + normalisation) and the frame's CLIP
patch features (`encode_clip_frames` of the model, with the scores a visual-token budget keeps tokens by),
which make up most of the encoder time. What cannot be
kept is per window: frame selection, VideoMamba over the selected frames (one joint clip), the projectors,
and the language model.

Both preprocessings work frame by frame and CLIP encodes each frame on its own, so a cached window's inputs
are the same as an uncached one's (bit for bit on CPU in fp32; a GPU kernel may round differently for
another batch size).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from mobilevideogpt.data.transforms import clip_transform, videomamba_transform
from mobilevideogpt.data.video import VideoInputs
from mobilevideogpt.live.windows import Window


def window_inputs(frames: Sequence[np.ndarray], window: Window, image_size: int, path: str) -> VideoInputs:
    """Uncached: both preprocessings of a window's sampled frames (RGB uint8, in `window.frame_indices`
    order), for the model to encode in full."""
    stack = np.stack(frames)
    return VideoInputs(
        frames=videomamba_transform(stack, image_size),
        context_frames=clip_transform(stack, image_size),
        indices=list(window.frame_indices),
        fps=window.fps,
        num_total_frames=window.num_window_frames,
        path=path,
    )


class FrameCache:
    """Per-frame preprocessing and CLIP features by frame number; `release_before` drops what is past.

    `encode` maps CLIP-preprocessed frames (N, 3, S, S) to their features (N, L, D) and [CLS]-attention scores
    (N, L) or None: the model's `model.model.encode_clip_frames`.
    """

    def __init__(
        self, encode: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]], image_size: int
    ) -> None:
        self.encode = encode
        self.image_size = image_size
        self._entries: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]] = {}
        self.hits = 0
        self.misses = 0

    def inputs(self, frames: Sequence[np.ndarray], window: Window, path: str) -> VideoInputs:
        """`window_inputs` with `context_features` set, computing only the frames not seen before."""
        indices = window.frame_indices
        unique = list(dict.fromkeys(indices))
        new = [i for i in unique if i not in self._entries]
        self.misses += len(new)
        self.hits += len(unique) - len(new)
        if new:
            frame_of = dict(zip(indices, frames, strict=True))
            stack = np.stack([frame_of[i] for i in new])
            video = videomamba_transform(stack, self.image_size)
            context = clip_transform(stack, self.image_size)
            with torch.inference_mode():
                features, scores = self.encode(context)
            for row, index in enumerate(new):
                self._entries[index] = (video[row], context[row], features[row], None if scores is None else scores[row])
        entries = [self._entries[i] for i in indices]
        return VideoInputs(
            frames=torch.stack([e[0] for e in entries]),
            context_frames=torch.stack([e[1] for e in entries]),
            indices=list(indices),
            fps=window.fps,
            num_total_frames=window.num_window_frames,
            path=path,
            context_features=torch.stack([e[2] for e in entries]),
            context_scores=None if entries[0][3] is None else torch.stack([e[3] for e in entries]),
        )

    def release_before(self, index: int) -> None:
        for key in [k for k in self._entries if k < index]:
            del self._entries[key]

    def __len__(self) -> int:
        return len(self._entries)
