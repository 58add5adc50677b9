"""Text and video → model inputs, the same way for training, inference and evaluation.

In the manner of transformers' `processing_llava.py`: the chat template renders the text with one visual tag, the
tag becomes one `IMAGE_TOKEN_INDEX` placeholder in the token ids, and the model (`model/splice.py`) replaces that
placeholder by the video's visual embeddings. The video side is `data.video.load_video_inputs` (the one frame
sampler and both preprocessors) in the frame geometry `VideoTextProcessor` carries. `data/` sits above this
module (`VideoChat.load_video` joins the two), so the chat template and the record parser load no video code.

Qwen2 ChatML layout of one sample (⏎ = newline, [V] = the placeholder):

    <|im_start|>system⏎{system}<|im_end|>⏎<|im_start|>user⏎[V]⏎{question}<|im_end|>⏎<|im_start|>assistant⏎
    {answer}<|im_end|>⏎ ...further user/assistant turns...

Inference renders everything up to and including `<|im_start|>assistant⏎` (`render_prompt`); training renders the
whole conversation (`Conversation.segments`) with the same helper for the user turn, and consecutive masked text
is tokenized as one string, so the training prompt tokens equal the inference prompt tokens by construction.

Visual tags: `<video>` and `<image>` mark where the video goes. A run of adjacent tags (whitespace between them
allowed) is one placeholder: one sample carries one video. A run at the start or end of a user turn is moved to
the front as `<video>⏎{text}` (the inference layout, also what the published preprocessing does with trailing tags);
a run in the middle of the text stays where it is. A sample that has a video but no tag gets `<video>⏎` prepended
to its first user turn.

Annotation records (`qved_*.json` and the published instruction files) are read by one parser, `parse_record`,
for training, the setup check and evaluation alike:

    {"video": "dataset/<class>/<file>.mp4",             # optional; absent = text-only sample
     "conversations": [{"from": "human", "value": "..."}, {"from": "gpt", "value": "..."}, ...]}

Turns may also be written `{"role": "user"|"assistant"|"system", "content": "..."}`. A leading system turn
replaces the default system prompt; turns before the first user turn are skipped (as the published preprocessing
does, so an answer is never supervised without a question).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .constants import DEFAULT_SYSTEM_PROMPT, DEFAULT_VIDEO_TOKEN, IGNORE_INDEX, IMAGE_SIZE, IMAGE_TOKEN_INDEX

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
# Generation stops when the model emits the turn separator.
STOP_STRING = IM_END

USER, ASSISTANT, SYSTEM = "user", "assistant", "system"
_ROLE_ALIASES = {"human": USER, "user": USER, "gpt": ASSISTANT, "assistant": ASSISTANT, "system": SYSTEM}

# One or more `<video>`/`<image>` tags with only whitespace between them: a single visual slot.
VISUAL_TAG_RUN = re.compile(r"(?:<video>|<image>)(?:\s*(?:<video>|<image>))*")

# Why an annotation record cannot be used (`AnnotationError.reason`).
NO_CONVERSATIONS = "no_conversations"
NO_ANSWER = "no_answer"
INVALID = "invalid_record"


class AnnotationError(ValueError):
    """An annotation record cannot be used; `reason` is one of NO_CONVERSATIONS, NO_ANSWER, INVALID."""

    def __init__(self, message: str, reason: str = INVALID):
        super().__init__(message)
        self.reason = reason


def normalize_role(role: str) -> str:
    """`human`/`user` → `user`, `gpt`/`assistant` → `assistant`, `system` → `system`; anything else is an error."""
    try:
        return _ROLE_ALIASES[role.lower()]
    except (KeyError, AttributeError):
        raise AnnotationError(f"unknown conversation role {role!r}; expected one of {sorted(_ROLE_ALIASES)}") from None


def turn_role_and_text(turn: Mapping) -> tuple[str, str]:
    """Reads a turn written as `{"from", "value"}` (LLaVA style) or `{"role", "content"}` (chat style)."""
    if not isinstance(turn, Mapping):
        raise AnnotationError(f"a conversation turn must be an object, got {type(turn).__name__}")
    if "from" in turn and "value" in turn:
        role, text = turn["from"], turn["value"]
    elif "role" in turn and "content" in turn:
        role, text = turn["role"], turn["content"]
    else:
        raise AnnotationError(f"a conversation turn needs `from`/`value` or `role`/`content` keys, got {sorted(turn)}")
    if not isinstance(text, str):
        raise AnnotationError(f"turn text must be a string, got {type(text).__name__}")
    return normalize_role(role), text


def count_visual_tags(text: str) -> int:
    """Number of visual slots in `text` (runs of adjacent tags count once)."""
    return len(VISUAL_TAG_RUN.findall(text))


def place_visual_tag(text: str, add_if_missing: bool) -> str:
    """Normalizes the visual tag of one user turn to the inference layout.

    Returns `text` with its tag run collapsed to one `<video>`: moved to the front as `<video>\\n{text}` when it
    sat at the start or end (whitespace touching the tag dropped), kept in place when it sat mid-text. Without a
    tag, `<video>\\n` is prepended if `add_if_missing`, else the text is returned unchanged.
    """
    runs = list(VISUAL_TAG_RUN.finditer(text))
    if not runs:
        return f"{DEFAULT_VIDEO_TOKEN}\n{text}" if add_if_missing else text
    if len(runs) > 1:
        raise AnnotationError(
            f"text has {len(runs)} separate <video>/<image> tags but a sample carries one video: {text!r}"
        )
    before, after = text[: runs[0].start()], text[runs[0].end() :]
    if before.strip() and after.strip():
        return f"{before}{DEFAULT_VIDEO_TOKEN}{after}"
    return f"{DEFAULT_VIDEO_TOKEN}\n{before.rstrip()}{after.lstrip()}"


def _system_block(system: str) -> str:
    return f"{IM_START}{SYSTEM}\n{system}{IM_END}\n"


def _turn_header(role: str) -> str:
    return f"{IM_START}{role}\n"


def render_prompt(question: str, system: str = DEFAULT_SYSTEM_PROMPT, has_video: bool = True) -> str:
    """The inference prompt for one question, ending in `<|im_start|>assistant\\n`.

    With `has_video`, the text holds exactly one `<video>` tag where the visual embeddings go (added when the
    question has none). A tag in the question without a video is an error.
    """
    if not has_video and count_visual_tags(question):
        raise AnnotationError(f"the question contains a <video>/<image> tag but no video is given: {question!r}")
    user_text = place_visual_tag(question, add_if_missing=has_video)
    return f"{_system_block(system)}{_turn_header(USER)}{user_text}{IM_END}\n{_turn_header(ASSISTANT)}"


def tokenize_with_placeholders(text: str, tokenizer) -> list[int]:
    """Token ids of `text` with one `IMAGE_TOKEN_INDEX` per run of `<video>`/`<image>` tags.

    The pieces between tag runs are tokenized separately without special-token additions (Qwen has no BOS).
    """
    ids: list[int] = []
    pieces = VISUAL_TAG_RUN.split(text)
    for i, piece in enumerate(pieces):
        if i > 0:
            ids.append(IMAGE_TOKEN_INDEX)
        if piece:
            ids.extend(tokenizer.encode(piece, add_special_tokens=False))
    return ids


@dataclass(frozen=True)
class Conversation:
    """One parsed annotation record: its video (as written) and its turns from the first question on."""

    video: str | None
    turns: tuple[tuple[str, str], ...]  # (role, text), roles USER / ASSISTANT
    system: str | None = None  # the record's own system turn, if it has one

    @property
    def has_video(self) -> bool:
        return self.video is not None

    def first_exchange(self) -> tuple[str, str]:
        """(first question, its answer): what evaluation asks and compares against."""
        return self.turns[0][1], next(text for role, text in self.turns[1:] if role == ASSISTANT)

    def segments(self, system: str = DEFAULT_SYSTEM_PROMPT) -> list[tuple[str, bool]]:
        """The rendered conversation as `(text, supervised)` pieces; supervised pieces are answers + `<|im_end|>`.

        The record's own system turn, when it has one, takes the place of `system`.
        """
        tagged = any(count_visual_tags(text) for _, text in self.turns)
        pieces: list[tuple[str, bool]] = [(_system_block(self.system if self.system is not None else system), False)]
        for i, (role, text) in enumerate(self.turns):
            if role == USER:
                user_text = place_visual_tag(text, add_if_missing=self.has_video and not tagged and i == 0)
                pieces.append((f"{_turn_header(USER)}{user_text}{IM_END}\n", False))
            else:
                pieces.append((_turn_header(ASSISTANT), False))
                pieces.append((f"{text}{IM_END}", True))
                pieces.append(("\n", False))
        return pieces


def parse_conversation(conversations: Any, video: str | None = None) -> Conversation:
    """Check and normalise the `conversations` list of a record whose video is `video` (None: text only).

    Errors (`AnnotationError`): no turns, a malformed turn, an empty turn, a `system` turn anywhere but first, a
    tag without a video, a tag in an answer, more than one tag run, no answer after the first question.
    """
    if not conversations:
        raise AnnotationError("no `conversations`", NO_CONVERSATIONS)
    if not isinstance(conversations, list):
        raise AnnotationError("`conversations` must be a list of turns")
    turns = []
    for index, raw in enumerate(conversations):
        try:
            role, text = turn_role_and_text(raw)
        except AnnotationError as err:
            raise AnnotationError(f"turn {index}: {err}") from None
        if not text.strip():
            raise AnnotationError(f"turn {index} ({role}) has no text")
        turns.append((role, text))
    system = None
    if turns[0][0] == SYSTEM:
        system = turns.pop(0)[1]
    if any(role == SYSTEM for role, _ in turns):
        raise AnnotationError("a `system` turn is only allowed as the first turn")
    first_user = next((i for i, (role, _) in enumerate(turns) if role == USER), len(turns))
    turns = turns[first_user:]
    if not any(role == ASSISTANT for role, _ in turns):
        raise AnnotationError("no answer (assistant/gpt turn) after a question (human/user turn)", NO_ANSWER)

    tag_runs = 0
    for role, text in turns:
        n = count_visual_tags(text)
        if n and role == ASSISTANT:
            raise AnnotationError(f"an assistant turn contains a <video>/<image> tag: {text!r}")
        tag_runs += n
    if tag_runs and video is None:
        raise AnnotationError("the conversation contains a <video>/<image> tag but the sample has no video")
    if tag_runs > 1:
        raise AnnotationError(f"the conversation has {tag_runs} separate <video>/<image> tags; a sample carries one video")
    return Conversation(video, tuple(turns), system)


def parse_record(record: Any) -> Conversation:
    """One annotation record (see the module docstring) → `Conversation`; raises `AnnotationError`."""
    if not isinstance(record, Mapping):
        raise AnnotationError(f"expected an object, got {type(record).__name__}")
    video = record.get("video")
    if video is None and "image" in record:
        raise AnnotationError("image samples are not supported; give a `video` path")
    if video is not None and (not isinstance(video, str) or not video.strip()):
        raise AnnotationError(f"`video` must be a non-empty path string, got {video!r}")
    if "split" in record and not isinstance(record["split"], str):
        raise AnnotationError("`split` must be a string")
    return parse_conversation(record.get("conversations"), video)


def tokenize_segments(segments: Sequence[tuple[str, bool]], tokenizer) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of rendered segments; labels are `IGNORE_INDEX` except answer tokens + `<|im_end|>`.

    A video sample's ids hold exactly one `IMAGE_TOKEN_INDEX`. Consecutive pieces with the same supervision flag
    are tokenized as one string, which keeps the prompt's tokens identical to
    `tokenize_with_placeholders(render_prompt(question), tokenizer)`.
    """
    merged: list[tuple[str, bool]] = []
    for text, supervised in segments:
        if merged and merged[-1][1] == supervised:
            merged[-1] = (merged[-1][0] + text, supervised)
        else:
            merged.append((text, supervised))
    input_ids: list[int] = []
    labels: list[int] = []
    for text, supervised in merged:
        ids = tokenize_with_placeholders(text, tokenizer)
        input_ids.extend(ids)
        labels.extend(ids if supervised else [IGNORE_INDEX] * len(ids))
    return input_ids, labels


class VideoTextProcessor:
    """A tokenizer plus the model's frame geometry: prompts in the form the model takes, and the geometry its
    videos are decoded in (`data.video.load_video_inputs(path, num_frames=..., image_size=...)`).

    `num_frames` / `image_size` must be the model's (`from_model_config`); the system prompt is the template's.
    """

    def __init__(self, tokenizer, num_frames: int, image_size: int = IMAGE_SIZE, system_prompt: str = DEFAULT_SYSTEM_PROMPT):
        self.tokenizer = tokenizer
        self.num_frames = num_frames
        self.image_size = image_size
        self.system_prompt = system_prompt

    @classmethod
    def from_model_config(cls, tokenizer, config, system_prompt: str = DEFAULT_SYSTEM_PROMPT) -> VideoTextProcessor:
        return cls(tokenizer, config.num_frames, config.clip_vision().image_size, system_prompt)

    def prompt_ids(self, question: str, has_video: bool = True, system: str | None = None) -> list[int]:
        """Token ids of the inference prompt for `question` (one placeholder when `has_video`); `system` replaces
        the processor's system prompt for this prompt only."""
        text = render_prompt(question, self.system_prompt if system is None else system, has_video)
        return tokenize_with_placeholders(text, self.tokenizer)

    def conversation_ids(self, conversation: Conversation) -> tuple[list[int], list[int]]:
        """(input_ids, labels) of a whole parsed conversation (training)."""
        return tokenize_segments(conversation.segments(self.system_prompt), self.tokenizer)
