"""The Qwen2 ChatML template, shared by training, inference and evaluation.

Layout of one sample (⏎ = newline, [V] = one `IMAGE_TOKEN_INDEX` placeholder that the model replaces with the
video's visual embeddings):

    <|im_start|>system⏎{system}<|im_end|>⏎<|im_start|>user⏎[V]⏎{question}<|im_end|>⏎<|im_start|>assistant⏎
    {answer}<|im_end|>⏎ ...further user/assistant turns...

Inference renders everything up to and including `<|im_start|>assistant⏎` (`render_prompt`); training renders the
whole conversation (`tokenize_conversation`) with the same helper for the user turn, and consecutive masked text is
tokenized as one string, so the training prompt tokens equal the inference prompt tokens by construction.

Visual tags: `<video>` and `<image>` mark where the video goes. A run of adjacent tags (whitespace between them
allowed) is one placeholder: one sample carries one video. A run at the start or end of a user turn is moved to
the front as `<video>⏎{text}` (the inference layout, also what the published preprocessing does with trailing tags);
a run in the middle of the text stays where it is. A sample that has a video but no tag gets `<video>⏎` prepended
to its first user turn.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from mobilevideogpt.constants import DEFAULT_SYSTEM_PROMPT, DEFAULT_VIDEO_TOKEN, IGNORE_INDEX, IMAGE_TOKEN_INDEX

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
# Generation stops when the model emits the turn separator.
STOP_STRING = IM_END

USER, ASSISTANT, SYSTEM = "user", "assistant", "system"
_ROLE_ALIASES = {"human": USER, "user": USER, "gpt": ASSISTANT, "assistant": ASSISTANT, "system": SYSTEM}

# One or more `<video>`/`<image>` tags with only whitespace between them: a single visual slot.
VISUAL_TAG_RUN = re.compile(r"(?:<video>|<image>)(?:\s*(?:<video>|<image>))*")


def normalize_role(role: str) -> str:
    """`human`/`user` → `user`, `gpt`/`assistant` → `assistant`, `system` → `system`; anything else is an error."""
    try:
        return _ROLE_ALIASES[role.lower()]
    except (KeyError, AttributeError):
        raise ValueError(f"unknown conversation role {role!r}; expected one of {sorted(_ROLE_ALIASES)}") from None


def turn_role_and_text(turn: Mapping) -> tuple[str, str]:
    """Reads a turn written as `{"from", "value"}` (LLaVA style) or `{"role", "content"}` (chat style)."""
    if not isinstance(turn, Mapping):
        raise ValueError(f"a conversation turn must be an object, got {type(turn).__name__}")
    if "from" in turn and "value" in turn:
        role, text = turn["from"], turn["value"]
    elif "role" in turn and "content" in turn:
        role, text = turn["role"], turn["content"]
    else:
        raise ValueError(f"a conversation turn needs `from`/`value` or `role`/`content` keys, got {sorted(turn)}")
    if not isinstance(text, str):
        raise ValueError(f"turn text must be a string, got {type(text).__name__}")
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
        raise ValueError(f"text has {len(runs)} separate <video>/<image> tags but a sample carries one video: {text!r}")
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
        raise ValueError(f"the question contains a <video>/<image> tag but no video is given: {question!r}")
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


def conversation_segments(
    conversations: Sequence[Mapping], system: str = DEFAULT_SYSTEM_PROMPT, has_video: bool = True
) -> list[tuple[str, bool]]:
    """The rendered conversation as `(text, supervised)` pieces; supervised pieces are answers + `<|im_end|>`.

    Rules: a leading `system` turn replaces `system`; turns before the first user turn are skipped (as the
    published preprocessing does, so an assistant turn is never supervised without a question); the video tag
    goes to the first user turn when no turn has one. Errors: a tag without a video, more than one tag run,
    a tag in an assistant turn, a `system` turn anywhere but first.
    """
    turns = [turn_role_and_text(t) for t in conversations]
    if turns and turns[0][0] == SYSTEM:
        system = turns[0][1]
        turns = turns[1:]
    if any(role == SYSTEM for role, _ in turns):
        raise ValueError("a `system` turn is only allowed as the first turn")
    first_user = next((i for i, (role, _) in enumerate(turns) if role == USER), len(turns))
    turns = turns[first_user:]

    tag_runs = 0
    for role, text in turns:
        n = count_visual_tags(text)
        if n and role == ASSISTANT:
            raise ValueError(f"an assistant turn contains a <video>/<image> tag: {text!r}")
        tag_runs += n
    if tag_runs and not has_video:
        raise ValueError("the conversation contains a <video>/<image> tag but the sample has no video")
    if tag_runs > 1:
        raise ValueError(f"the conversation has {tag_runs} separate <video>/<image> tags; a sample carries one video")

    segments: list[tuple[str, bool]] = [(_system_block(system), False)]
    for i, (role, text) in enumerate(turns):
        if role == USER:
            user_text = place_visual_tag(text, add_if_missing=has_video and tag_runs == 0 and i == 0)
            segments.append((f"{_turn_header(USER)}{user_text}{IM_END}\n", False))
        else:
            segments.append((_turn_header(ASSISTANT), False))
            segments.append((f"{text}{IM_END}", True))
            segments.append(("\n", False))
    return segments


def tokenize_conversation(
    conversations: Sequence[Mapping], tokenizer, system: str = DEFAULT_SYSTEM_PROMPT, has_video: bool = True
) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of a whole conversation; labels are `IGNORE_INDEX` except answer tokens + `<|im_end|>`.

    A video sample's ids hold exactly one `IMAGE_TOKEN_INDEX`. Consecutive pieces with the same supervision flag
    are tokenized as one string, which keeps the prompt's tokens identical to
    `tokenize_with_placeholders(render_prompt(question), tokenizer)`.
    """
    return tokenize_segments(conversation_segments(conversations, system, has_video), tokenizer)


def tokenize_segments(segments: Sequence[tuple[str, bool]], tokenizer) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of rendered `conversation_segments` (see `tokenize_conversation`)."""
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
