"""Answer questions about videos with a loaded Mobile-VideoGPT: the API behind the applications.

    from mobilevideogpt import VideoChat
    chat = VideoChat.from_pretrained("results/qved_finetune_mobilevideogpt_0.5B/checkpoint-final")
    result = chat.answer("clip.mp4", "What is the person doing?")                  # greedy
    print(result.text, result.timings.decode_tokens_per_s)
    chat.answer("clip.mp4", "Describe the movement.", temperature=0.7, on_text=print)  # sampled, streamed

The model is loaded once (`model.assemble`: base checkpoint, hub id, or training output, placed as
`runtime.plan_inference` decides); each `answer` decodes the video with the training sampler, renders the training
chat template (`processing`), and generates until `<|im_end|>` (stripped from the text) or `max_new_tokens`; its
stages are methods of their own: `_prepare` (prompt ids, cache lookup, decoding), `_encode`, `_generate`,
`_keep_prefix`, `_result`.

Follow-up questions about the same video are cheap: the chat keeps the KV cache of the last video's prompt prefix
(system prompt, user header, the 2402 visual tokens and the text before the question), so a second question about
that video (the same path, unchanged on disk, or the same `VideoInputs`) skips decoding, both encoders and the
prefix's prefill and pays only for its own text. The answers are those of asking afresh (same prompt tokens; the
cached keys and values are the ones a fresh prefill computes). `forget_video()` drops the cache.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch
from transformers import TextStreamer

from .checkpoints import ModelSource
from .constants import DEFAULT_SYSTEM_PROMPT, IMAGE_TOKEN_INDEX
from .data.video import VideoInputs, load_video_inputs
from .model.assemble import load_for_inference
from .engine.decoding import GrowingLayer, new_cache
from .engine.draft_decoding import greedy_decode
from .model.splice import splice_visual_tokens
from .model.token_budget import BudgetRequest
from .processing import STOP_STRING, VideoTextProcessor
from .runtime import InferencePlan

logger = logging.getLogger(__name__)


@dataclass
class Timings:
    """Where the time of one answer went (seconds; CUDA work is synchronised at each boundary).

    time_to_first_token_s = video_decode_s + encode_s + prefill_s: from the call to the first new token.
    decode_tokens_per_s counts the tokens after the first over the time after the first (steady decoding);
    tokens_per_s counts all new tokens over prefill + decode (generation as a whole).
    """

    video_decode_s: float  # read + sample + both preprocessors (0 when frames were passed in or the video was cached)
    encode_s: float  # CLIP + frame selection + VideoMamba + projectors + splice into the prompt embeddings
    prefill_s: float  # generate() start → first new token (LLM over the prompt positions not in the cache)
    decode_s: float  # first → last new token
    total_s: float
    new_tokens: int
    cached_tokens: int = 0  # prompt positions (visual tokens included) served from the video's cached prefix

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
    token_ids: list[int] = field(default_factory=list)  # the new tokens (a draft for the next answer, `answer`)
    draft_accepted: int = 0  # of them, draft tokens confirmed in verification steps

    def to_dict(self) -> dict:
        out = asdict(self)
        out["timings"] = self.timings.to_dict()
        del out["token_ids"], out["draft_accepted"]
        return out


class _TimedStreamer(TextStreamer):
    """Records when each new token arrives; forwards finished text pieces to `on_text` (if any), without the
    whitespace the answer starts with (the final text is stripped too, so streamed and final text agree)."""

    def __init__(self, tokenizer, on_text: Callable[[str], None] | None) -> None:
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.on_text = on_text
        self.token_times: list[float] = []
        self._started = False

    def put(self, value: torch.Tensor) -> None:
        # The first call carries the prompt (empty when generating from embeddings), the rest one token each.
        if not self.next_tokens_are_prompt:
            self.token_times.append(time.perf_counter())
        super().put(value)

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if not self._started:
            text = text.lstrip()
            self._started = bool(text)
        if text and self.on_text is not None:
            self.on_text(text)


@dataclass
class _VideoPrefix:
    """The last video's prompt prefix: which video, its visual tokens, and the KV cache that holds the prefix."""

    video: VideoInputs | tuple  # the VideoInputs passed in, or (real path, size, mtime) of the file decoded
    path: str
    frame_indices: list[int]
    ids: list[int]  # prompt ids of the prefix, placeholder included
    visual: torch.Tensor  # (1, visual tokens, hidden)
    cache: object  # transformers Cache; positions past `length` belong to the last question and answer
    length: int  # prompt positions of the prefix once the visual tokens are spliced in

    def serves(self, video: VideoInputs | tuple, ids: list[int]) -> bool:
        if len(ids) <= len(self.ids) or ids[: len(self.ids)] != self.ids:
            return False
        if isinstance(video, tuple) or isinstance(self.video, tuple):
            return video == self.video
        mine = self.video
        return video is mine or (
            video.path == mine.path
            and list(video.indices) == list(mine.indices)
            and torch.equal(video.frames, mine.frames)
            and torch.equal(video.context_frames, mine.context_frames)
        )


@dataclass
class _Question:
    """One question ready to encode: its prompt ids, and its video as decoded frames or as the cached prefix
    of the last video (exactly one of `inputs` / `cached`)."""

    ids: list[int]
    key: VideoInputs | tuple | None  # what identifies the video to the cache (see `_VideoPrefix.video`)
    inputs: VideoInputs | None
    cached: _VideoPrefix | None
    decoded: bool  # the video file was decoded for this question

    @property
    def path(self) -> str:
        return self.inputs.path if self.inputs is not None else self.cached.path

    @property
    def frame_indices(self) -> list[int]:
        return list(self.inputs.indices) if self.inputs is not None else self.cached.frame_indices


def _file_key(path: str | os.PathLike) -> tuple | None:
    """(real path, size, mtime) of a video file, or None when it cannot be read (the decoder then says why)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (os.path.realpath(path), st.st_size, st.st_mtime_ns)


class VideoChat:
    """A loaded Mobile-VideoGPT that answers prompts about videos (batch size 1; see the module docstring)."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer,
        *,
        system_prompt: str = DEFAULT_SYSTEM_PROMPT,
        source: ModelSource | None = None,
        plan: InferencePlan | None = None,
        keep_video: bool = True,
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.source = source
        self.plan = plan
        self.keep_video = keep_video
        self.processor = VideoTextProcessor.from_model_config(tokenizer, model.config, system_prompt)
        self.stop_token_ids = self._stop_token_ids()
        self._prefix_ids: dict[str | None, list[int]] = {}  # per system prompt (None: the chat's own)
        self._cached: _VideoPrefix | None = None
        self._cache_lock = threading.Lock()

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
        quantize: str | None = None,
        visual_tokens: BudgetRequest = None,
    ) -> VideoChat:
        """Load a base checkpoint, hub id or training output (raises `ModelLoadError` with the fix); `device`,
        `dtype` and `quantize` go to `runtime.plan_inference`. `visual_tokens` is the visual-token budget per
        video: a count, a fraction of all of them, "all", or None for the one the checkpoint was trained with."""
        loaded = load_for_inference(
            model_path, model_base, device, dtype, clip_path, videomamba_path, quantize, visual_tokens
        )
        return cls(loaded.model, loaded.tokenizer, system_prompt=system_prompt, source=loaded.source, plan=loaded.plan)

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        """The language model's hidden-state dtype."""
        return self.model.model.hidden_dtype

    @property
    def visual_tokens(self) -> int:
        """Visual tokens per video the language model reads (the budget, or all of them)."""
        return self.model.config.visual_tokens_per_video

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

    def question_independent_prefix(self, system_prompt: str | None = None) -> list[int]:
        """Prompt ids that every question about a video starts with: up to the video placeholder and the text
        after it that no question changes (the common start of two prompts that differ only in the question)."""
        if system_prompt not in self._prefix_ids:
            first = self.processor.prompt_ids("a", system=system_prompt)
            second = self.processor.prompt_ids("b", system=system_prompt)
            common = 0
            while common < min(len(first), len(second)) and first[common] == second[common]:
                common += 1
            self._prefix_ids[system_prompt] = first[:common] if IMAGE_TOKEN_INDEX in first[:common] else []
        return self._prefix_ids[system_prompt]

    def forget_video(self) -> None:
        """Drop the cached prompt prefix of the last video (its KV cache: ~60 MB at full size in fp32)."""
        with self._cache_lock:
            self._cached = None

    def _take_cached(self, video: VideoInputs | tuple | None, ids: list[int]) -> _VideoPrefix | None:
        """The cached prefix if it serves this video and prompt (taken out, so concurrent calls never share it)."""
        with self._cache_lock:
            cached, self._cached = self._cached, None
        return cached if cached is not None and video is not None and cached.serves(video, ids) else None

    def _keep(self, cached: _VideoPrefix) -> None:
        if not all(isinstance(layer, GrowingLayer) for layer in cached.cache.layers):
            return  # e.g. sliding-window layers: they drop old positions, so the prefix cannot be cut back out
        cached.cache.crop(cached.length - cached.cache.get_seq_length())
        with self._cache_lock:
            self._cached = cached

    def load_video(self, video_path: str | os.PathLike) -> VideoInputs:
        """Decode + preprocess with the training sampler in the model's geometry; raises `VideoDecodeError`."""
        return load_video_inputs(video_path, num_frames=self.num_frames, image_size=self.image_size)

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
        draft: Sequence[int] | None = None,
    ) -> ChatResult:
        """Answer `prompt` about `video` (a path, or frames from `load_video`).

        temperature 0 → greedy;
        > 0 → sampling with `top_p` (`seed` makes it repeatable). `on_text` receives the answer as it is
        generated, in readable pieces. Raises `VideoDecodeError` for an unreadable video.
        `draft`: token ids the answer may repeat (e.g. the previous live window's `token_ids`); greedy answers check
        them several at a time (`engine/draft_decoding.py`): the same answer, fewer passes over the weights.
        """
        generation = self.generation_kwargs(max_new_tokens, temperature, top_p, min_new_tokens)
        if draft:
            vocabulary = self.model.get_input_embeddings().num_embeddings
            if not all(isinstance(t, int) and 0 <= t < vocabulary for t in draft):
                raise ValueError(f"a draft holds token ids (integers from 0 to {vocabulary - 1})")
        start = time.perf_counter()
        question = self._prepare(video, prompt, system_prompt)
        decoded = time.perf_counter()
        if seed is not None:
            torch.manual_seed(seed)

        with torch.inference_mode():
            if question.cached is None:
                visual, cache = self._encode(question.inputs), new_cache(self.model.config)
            else:
                visual, cache = question.cached.visual, question.cached.cache
            cached_tokens = cache.get_seq_length()
            input_ids = torch.tensor([question.ids], device=self.device)
            spliced = splice_visual_tokens(input_ids, self.model.model.embed_tokens, visual, padding_side="left")
            self._synchronize()
            encoded = time.perf_counter()
            generation = self._fit_positions(generation, spliced.inputs_embeds.shape[1])
            new_ids, token_times, accepted = self._generate(spliced, cache, generation, on_text, draft)
        finished = time.perf_counter()

        if self.keep_video:
            self._keep_prefix(question, visual, cache, system_prompt)
        first = token_times[0] if token_times else finished
        timings = Timings(
            video_decode_s=decoded - start if question.decoded else 0.0,
            encode_s=encoded - decoded,
            prefill_s=first - encoded,
            decode_s=(token_times[-1] - first) if token_times else 0.0,
            total_s=finished - start,
            new_tokens=len(new_ids),
            cached_tokens=cached_tokens,
        )
        settings = {
            "max_new_tokens": generation["max_new_tokens"],
            **({"max_new_tokens_requested": max_new_tokens} if generation["max_new_tokens"] != max_new_tokens else {}),
            "temperature": temperature,
            "top_p": top_p if temperature > 0 else None,
            "seed": seed,
        }
        return self._result(question, prompt, new_ids, timings, settings, accepted)

    def _prepare(self, video: str | os.PathLike | VideoInputs, prompt: str, system_prompt: str | None) -> _Question:
        """The prompt's ids, and the video: served by the cached prefix of the last video, or decoded now."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("the prompt is empty; ask a question about the video")
        ids = self.processor.prompt_ids(prompt, system=system_prompt)
        key = video if isinstance(video, VideoInputs) else _file_key(video)
        cached = self._take_cached(key, ids) if self.keep_video else None
        if cached is not None:
            return _Question(ids, key, None, cached, decoded=False)
        if isinstance(video, VideoInputs):
            return _Question(ids, key, video, None, decoded=False)
        return _Question(ids, key, self.load_video(video), None, decoded=True)

    def _encode(self, inputs: VideoInputs) -> torch.Tensor:
        """The video's visual tokens (1, tokens, hidden): both towers, frame selection, the projectors. CLIP
        features and [CLS] scores the caller kept (live) are used as they are; the scores pick the tokens a
        visual-token budget keeps."""
        features, scores = inputs.context_features, inputs.context_scores
        return self.model.model.encode_videos(
            inputs.frames[None].to(self.device),
            inputs.context_frames[None].to(self.device) if features is None else None,
            features[None].to(self.device) if features is not None else None,
            scores[None].to(self.device) if scores is not None else None,
        )

    def _generate(
        self, spliced, cache, generation: dict, on_text, draft: Sequence[int] | None
    ) -> tuple[list[int], list[float], int]:
        """The new token ids after the spliced prompt (its positions past the cache's), when each arrived, and how
        many of them were confirmed from `draft` (greedy settings check it; `generate` runs otherwise)."""
        streamer = _TimedStreamer(self.tokenizer, on_text)
        if not draft or generation["do_sample"]:
            new_ids = self.model.generate(
                inputs_embeds=spliced.inputs_embeds,
                attention_mask=spliced.attention_mask,
                cache=cache,
                streamer=streamer,
                **generation,
            )[0].tolist()
            return new_ids, streamer.token_times, 0
        streamer.put(torch.empty(1, 0, dtype=torch.long))  # the prompt, as `generate` passes it first
        decoded = greedy_decode(
            self.model,
            spliced.inputs_embeds,
            spliced.attention_mask,
            cache,
            draft=draft,
            max_new_tokens=generation["max_new_tokens"],
            min_new_tokens=generation["min_new_tokens"],
            stop_ids=self.stop_token_ids,
            on_token=lambda token: streamer.put(torch.tensor([token])),
        )
        streamer.end()
        return decoded.tokens, streamer.token_times, decoded.accepted

    def _keep_prefix(self, question: _Question, visual: torch.Tensor, cache, system_prompt: str | None) -> None:
        """Keep the video's prompt prefix and its KV cache for the next question: the prefix that served this
        one, or this video's own when the prompt starts with the question-independent prefix."""
        kept = question.cached
        if kept is None:
            prefix = self.question_independent_prefix(system_prompt)
            if not prefix or question.ids[: len(prefix)] != prefix:
                return
            inputs = question.inputs
            kept = _VideoPrefix(
                video=question.key if question.key is not None else inputs,
                path=inputs.path,
                frame_indices=list(inputs.indices),
                ids=prefix,
                visual=visual,
                cache=cache,
                length=len(prefix) - 1 + visual.shape[1],
            )
        self._keep(kept)

    def _result(
        self, question: _Question, prompt: str, new_ids: list[int], timings: Timings, generation: dict, accepted: int
    ) -> ChatResult:
        """The answer's text (stop string and surrounding whitespace removed) and why generation ended."""
        stopped = bool(new_ids) and new_ids[-1] in self.stop_token_ids
        text = self.tokenizer.decode(new_ids, skip_special_tokens=True).strip().removesuffix(STOP_STRING).rstrip()
        return ChatResult(
            text=text,
            prompt=prompt,
            video_path=question.path,
            num_new_tokens=len(new_ids),
            finish_reason="stop" if stopped else "length",
            frame_indices=question.frame_indices,
            timings=timings,
            generation=generation,
            token_ids=list(new_ids),
            draft_accepted=accepted,
        )
