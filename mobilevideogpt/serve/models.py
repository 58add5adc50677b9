"""The models a server answers with: loaded once, named by the path they were loaded from.

Videos are decoded outside the model thread (`ServedModel.load_inputs`, safe from any thread: it reads only
the model's frame geometry), so the worker spends its time on the model alone.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..constants import IMAGE_TOKEN_INDEX
from ..data.video import VideoInputs

if TYPE_CHECKING:
    from ..model.token_budget import BudgetRequest


class NotAVideoError(ValueError):
    """The file decodes but is not a moving picture (a still image opens as a one-frame video)."""


def require_moving_picture(num_total_frames: int) -> None:
    if num_total_frames < 2:
        raise NotAVideoError(f"it holds {num_total_frames} frame (a still image?); a video has at least 2 frames")


@dataclass
class ServedModel:
    """One loaded model: `id` is what the API's `model` field names, `role` what the page calls it."""

    id: str
    role: str  # "model" or "compare"
    chat: object  # VideoChat

    def load_inputs(self, video_path: str | os.PathLike) -> tuple[VideoInputs, float]:
        """Decode and preprocess a video for this model; returns the inputs and the seconds it took.

        Raises `VideoDecodeError` (unreadable) or `NotAVideoError` (a single frame)."""
        started = time.perf_counter()
        inputs = self.chat.load_video(video_path)
        require_moving_picture(inputs.num_total_frames)
        return inputs, time.perf_counter() - started

    def prompt_tokens(self, prompt: str, system_prompt: str | None = None) -> int:
        """Tokens the language model reads for `prompt`: the rendered chat text plus the video's visual tokens."""
        ids = self.chat.processor.prompt_ids(prompt, system=system_prompt)
        placeholders = ids.count(IMAGE_TOKEN_INDEX)
        return len(ids) - placeholders + placeholders * self.chat.model.config.visual_tokens_per_video


def load_models(
    model_path: str,
    compare: str | None,
    device: str,
    dtype: str,
    visual_tokens: BudgetRequest = None,
    quantize: str | None = None,
) -> list[ServedModel]:
    """`model_path` (and `compare`, when given) as VideoChats, both with the visual-token budget `visual_tokens`
    (None: each its recorded one) and `quantize` (runtime.plan_inference); raises `ModelLoadError` with the fix."""
    from mobilevideogpt import VideoChat

    if compare is not None and os.path.normpath(compare) == os.path.normpath(model_path):
        raise ValueError(f"--compare {compare} names the same model as --model_path; compare two different models")
    options = {"device": device, "dtype": dtype, "quantize": quantize, "visual_tokens": visual_tokens}
    served = [ServedModel(model_path, "model", VideoChat.from_pretrained(model_path, **options))]
    if compare is not None:
        served.append(ServedModel(compare, "compare", VideoChat.from_pretrained(compare, **options)))
    return served
