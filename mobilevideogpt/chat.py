"""Answer questions about videos with a loaded Mobile-VideoGPT: the API behind the applications.

    from mobilevideogpt import VideoChat
    chat = VideoChat.from_pretrained("results/qved_finetune_mobilevideogpt_0.5B/checkpoint-final")
    result = chat.answer("clip.mp4", "What is the person doing?")                  # greedy
    print(result.text, result.timings.decode_tokens_per_s)
    chat.answer("clip.mp4", "Describe the movement.", temperature=0.7, on_text=print)  # sampled, streamed

The model is loaded once (`model.assemble`: base checkpoint, hub id, or training output); each `answer` decodes
the video with the training sampler, renders the training chat template (`processing`), and generates until
`<|im_end|>` (stripped from the text) or `max_new_tokens`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from transformers import TextStreamer

from .checkpoints import ModelSource
from .constants import DEFAULT_SYSTEM_PROMPT
from .data.video import VideoInputs
from .model.assemble import load_for_inference
from .processing import STOP_STRING, VideoTextProcessor

logger = logging.getLogger(__name__)


@dataclass
class Timings:
    """Where the time of one answer went (seconds; CUDA work is synchronised at each boundary).

    time_to_first_token_s = video_decode_s + encode_s + prefill_s: from the call to the first new token.
    decode_tokens_per_s counts the tokens after the first over the time after the first (steady decoding);
    tokens_per_s counts all new tokens over prefill + decode (generation as a whole).
    """

    video_decode_s: float  # read + sample + both preprocessors (0 when frames were passed in)
    encode_s: float  # CLIP + frame selection + VideoMamba + projectors + splice into the prompt embeddings
    prefill_s: float  # generate() start → first new token (LLM over prompt + visual tokens)
    decode_s: float  # first → last new token
    total_s: float
    new_tokens: int

    @property
    def time_to_first_token_s(self) -> float:
        return self.video_decode_s + self.encode_s + self.prefill_s

    @property
    def decode_tokens_per_s(self) -> float | None:
        if self.new_tokens < 2 or self.decode_s <= 0:
            return None
        return (self.new_tokens - 1) / self.decode_s

    @property
    def tokens_per_s(self) -> float | None:
        elapsed = self.prefill_s + self.decode_s
        return self.new_tokens / elapsed if self.new_tokens and elapsed > 0 else None

    def to_dict(self) -> dict:
        return {
            **asdict(self),
            "time_to_first_token_s": self.time_to_first_token_s,
            "decode_tokens_per_s": self.decode_tokens_per_s,
            "tokens_per_s": self.tokens_per_s,
        }


@dataclass
class ChatResult:
    """One answer: text (stop string removed), what was asked, why generation ended, and timings."""

    text: str
    prompt: str
    video_path: str
    num_new_tokens: int
    finish_reason: str  # "stop" (end-of-turn token) or "length" (max_new_tokens reached)
    frame_indices: list[int]
    timings: Timings
    generation: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["timings"] = self.timings.to_dict()
        return out


class _TimedStreamer(TextStreamer):
    """Records when each new token arrives; forwards finished text pieces to `on_text` (if any)."""

    def __init__(self, tokenizer, on_text: Callable[[str], None] | None) -> None:
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.on_text = on_text
        self.token_times: list[float] = []

    def put(self, value: torch.Tensor) -> None:
        # The first call carries the prompt (empty when generating from embeddings), the rest one token each.
        if not self.next_tokens_are_prompt:
            self.token_times.append(time.perf_counter())
        super().put(value)

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if text and self.on_text is not None:
            self.on_text(text)


class VideoChat:
    """A loaded Mobile-VideoGPT that answers prompts about videos (batch size 1; see the module docstring)."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer,
        *,
        system_prompt: str = DEFAULT_SYSTEM_PROMPT,
        source: ModelSource | None = None,
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.source = source
        self.processor = VideoTextProcessor.from_model_config(tokenizer, model.config, system_prompt)
        self.stop_token_ids = self._stop_token_ids()

    @classmethod
    def from_pretrained(
        cls,
        model_path: str | os.PathLike,
        *,
        model_base: str | os.PathLike | None = None,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype = "auto",
        clip_path: str | None = None,
        videomamba_path: str | None = None,
        system_prompt: str = DEFAULT_SYSTEM_PROMPT,
    ) -> VideoChat:
        """Load a base checkpoint, hub id or training output (raises `ModelLoadError` with the fix)."""
        loaded = load_for_inference(model_path, model_base, device, dtype, clip_path, videomamba_path)
        return cls(loaded.model, loaded.tokenizer, system_prompt=system_prompt, source=loaded.source)

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.get_input_embeddings().weight.dtype

    @property
    def system_prompt(self) -> str:
        return self.processor.system_prompt

    @property
    def num_frames(self) -> int:
        """Frames per video the model's token pipeline takes (16 for the published model)."""
        return self.processor.num_frames

    @property
    def image_size(self) -> int:
        return self.processor.image_size

    def _stop_token_ids(self) -> list[int]:
        """`<|im_end|>` first, then whatever else the checkpoint's generation config stops at."""
        ids = [self.tokenizer.convert_tokens_to_ids(STOP_STRING)]
        configured = getattr(self.model.generation_config, "eos_token_id", None)
        if configured is not None:
            ids += configured if isinstance(configured, list) else [configured]
        unknown = self.tokenizer.unk_token_id
        return list(dict.fromkeys(i for i in ids if i is not None and i != unknown))

    def load_video(self, video_path: str | os.PathLike) -> VideoInputs:
        """Decode + preprocess with the training sampler in the model's geometry; raises `VideoDecodeError`."""
        return self.processor.load_video(video_path)

    def _synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def generation_kwargs(self, max_new_tokens: int, temperature: float, top_p: float, min_new_tokens: int) -> dict:
        """Explicit settings, so the checkpoint's generation_config.json (e.g. a repetition penalty) cannot
        silently change results: greedy for temperature 0, plain temperature/top-p sampling otherwise."""
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        pad = self.tokenizer.pad_token_id
        settings = {
            "max_new_tokens": max_new_tokens,
            "min_new_tokens": min(min_new_tokens, max_new_tokens),
            "do_sample": temperature > 0,
            "repetition_penalty": 1.0,
            "num_beams": 1,
            "eos_token_id": self.stop_token_ids,
            "pad_token_id": pad if pad is not None else self.stop_token_ids[0],
            "use_cache": True,
        }
        if temperature > 0:
            # top_k 0 = no top-k filter (transformers would add its default 50, Qwen2.5 its configured 20).
            settings.update(temperature=temperature, top_p=top_p, top_k=0)
        return settings

    def _fit_positions(self, generation: dict, prompt_length: int) -> dict:
        """Clamp `max_new_tokens` so prompt (visual tokens included) + answer stay within the model's positions."""
        positions = getattr(self.model.config, "max_position_embeddings", None)
        if not positions:
            return generation
        room = positions - prompt_length
        if room < 1:
            raise ValueError(
                f"the prompt with its video takes {prompt_length} positions, the model has {positions}; shorten the prompt"
            )
        if generation["max_new_tokens"] <= room:
            return generation
        logger.warning(
            "max_new_tokens %d is past the model's %d positions (the prompt and video take %d): generating at most %d",
            generation["max_new_tokens"], positions, prompt_length, room,
        )
        return {**generation, "max_new_tokens": room, "min_new_tokens": min(generation["min_new_tokens"], room)}

    def answer(
        self,
        video: str | os.PathLike | VideoInputs,
        prompt: str,
        *,
        max_new_tokens: int = 512,
        temperature: float = 0.0,
        top_p: float = 1.0,
        min_new_tokens: int = 0,
        seed: int | None = None,
        system_prompt: str | None = None,
        on_text: Callable[[str], None] | None = None,
    ) -> ChatResult:
        """Answer `prompt` about `video` (a path, or frames from `load_video`).

        temperature 0 → greedy;
        > 0 → sampling with `top_p` (`seed` makes it repeatable). `on_text` receives the answer as it is
        generated, in readable pieces. Raises `VideoDecodeError` for an unreadable video.
        """
        generation = self.generation_kwargs(max_new_tokens, temperature, top_p, min_new_tokens)
        start = time.perf_counter()
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("the prompt is empty; ask a question about the video")
        inputs = video if isinstance(video, VideoInputs) else self.load_video(video)
        decoded = time.perf_counter()
        input_ids = torch.tensor([self.processor.prompt_ids(prompt, system=system_prompt)], device=self.device)
        if seed is not None:
            torch.manual_seed(seed)

        with torch.inference_mode():
            features = inputs.context_features
            spliced = self.model.model.prepare_multimodal_inputs(
                input_ids,
                images=inputs.frames[None].to(self.device),
                context_images=inputs.context_frames[None].to(self.device) if features is None else None,
                clip_features=features[None].to(self.device) if features is not None else None,
                padding_side="left",
            )
            self._synchronize()
            encoded = time.perf_counter()
            generation = self._fit_positions(generation, spliced.inputs_embeds.shape[1])
            streamer = _TimedStreamer(self.tokenizer, on_text)
            new_ids = self.model.generate(
                inputs_embeds=spliced.inputs_embeds,
                attention_mask=spliced.attention_mask,
                streamer=streamer,
                **generation,
            )[0].tolist()
        finished = time.perf_counter()

        times = streamer.token_times
        first = times[0] if times else finished
        stopped = bool(new_ids) and new_ids[-1] in self.stop_token_ids
        answer_text = self.tokenizer.decode(new_ids, skip_special_tokens=True).strip()
        answer_text = answer_text.removesuffix(STOP_STRING).rstrip()
        timings = Timings(
            video_decode_s=decoded - start if not isinstance(video, VideoInputs) else 0.0,
            encode_s=encoded - decoded,
            prefill_s=first - encoded,
            decode_s=(times[-1] - first) if times else 0.0,
            total_s=finished - start,
            new_tokens=len(new_ids),
        )
        return ChatResult(
            text=answer_text,
            prompt=prompt,
            video_path=inputs.path,
            num_new_tokens=len(new_ids),
            finish_reason="stop" if stopped else "length",
            frame_indices=list(inputs.indices),
            timings=timings,
            generation={
                "max_new_tokens": generation["max_new_tokens"],
                **({"max_new_tokens_requested": max_new_tokens} if generation["max_new_tokens"] != max_new_tokens else {}),
                "temperature": temperature,
                "top_p": top_p if temperature > 0 else None,
                "seed": seed,
            },
        )
