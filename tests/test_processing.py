"""The chat template, placeholders, and the one annotation-record parser (training, verify and evaluation)."""

import pytest

from mobilevideogpt.constants import DEFAULT_SYSTEM_PROMPT, IGNORE_INDEX, IMAGE_TOKEN_INDEX
from mobilevideogpt.processing import (
    INVALID,
    NO_ANSWER,
    NO_CONVERSATIONS,
    STOP_STRING,
    AnnotationError,
    VideoTextProcessor,
    parse_conversation,
    parse_record,
    render_prompt,
    tokenize_segments,
    tokenize_with_placeholders,
)

IM_START, IM_END, NL = 151644, 151645, 198
V = IMAGE_TOKEN_INDEX
QUESTION = "Analyze this squats video and provide corrective feedback."
ANSWER = "squats - User is going too low, keep the back straight"


def tokenize_conversation(conversations, tokenizer, system=DEFAULT_SYSTEM_PROMPT, has_video=True):
    conversation = parse_conversation(conversations, "clip.mp4" if has_video else None)
    return tokenize_segments(conversation.segments(system), tokenizer)


def guide_sample(question=QUESTION, answer=ANSWER):
    return [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]


@pytest.fixture(scope="module")
def enc(qwen25_tokenizer):
    return lambda text: qwen25_tokenizer.encode(text, add_special_tokens=False)


def expected_prompt(enc, question_ids, system=DEFAULT_SYSTEM_PROMPT, video=True):
    """The published inference layout, written piece by piece."""
    return (
        [IM_START, *enc("system"), NL, *enc(system), IM_END, NL]
        + [IM_START, *enc("user"), NL, *([V, NL] if video else []), *question_ids, IM_END, NL]
        + [IM_START, *enc("assistant"), NL]
    )


def test_single_turn_layout_and_label_mask(qwen25_tokenizer, enc):
    ids, labels = tokenize_conversation(guide_sample("<video>\n" + QUESTION), qwen25_tokenizer)
    prompt = expected_prompt(enc, enc(QUESTION))
    answer = enc(ANSWER) + [IM_END]
    assert ids == prompt + answer + [NL]
    # Only the answer and its closing <|im_end|> are supervised: not the header, not the trailing newline.
    assert labels == [IGNORE_INDEX] * len(prompt) + answer + [IGNORE_INDEX]
    assert ids.count(V) == 1


def test_video_tag_added_when_missing(qwen25_tokenizer):
    tagged = tokenize_conversation(guide_sample("<video>\n" + QUESTION), qwen25_tokenizer)
    untagged = tokenize_conversation(guide_sample(QUESTION), qwen25_tokenizer)
    assert untagged == tagged


@pytest.mark.parametrize(
    "question",
    [
        "<video><video>\n" + QUESTION,
        "<image>\n<image>" + QUESTION,
        "<image>" * 16 + "\n" + QUESTION,
        QUESTION + "\n<video>",
        QUESTION + " <image><image>",
        "<video> " + QUESTION,
    ],
)
def test_tag_runs_collapse_to_one_placeholder_in_front(qwen25_tokenizer, question):
    reference = tokenize_conversation(guide_sample("<video>\n" + QUESTION), qwen25_tokenizer)
    assert tokenize_conversation(guide_sample(question), qwen25_tokenizer) == reference


def test_mid_text_tag_stays_in_place(qwen25_tokenizer, enc):
    ids, _ = tokenize_conversation(guide_sample("Look at <video> and say what is wrong."), qwen25_tokenizer)
    user_start = ids.index(IM_START, 1) + 3  # <|im_start|> user \n
    assert ids[user_start:][: len(enc("Look at ")) + 1] == enc("Look at ") + [V]


def test_multi_turn_supervises_every_answer_only(qwen25_tokenizer, enc):
    conv = [
        {"from": "human", "value": QUESTION},
        {"from": "gpt", "value": "first answer"},
        {"from": "human", "value": "And the arms?"},
        {"from": "gpt", "value": "second answer"},
    ]
    ids, labels = tokenize_conversation(conv, qwen25_tokenizer)
    prompt = expected_prompt(enc, enc(QUESTION))
    first = enc("first answer") + [IM_END]
    second_prompt = [NL, IM_START, *enc("user"), NL, *enc("And the arms?"), IM_END, NL, IM_START, *enc("assistant"), NL]
    second = enc("second answer") + [IM_END]
    assert ids == prompt + first + second_prompt + second + [NL]
    assert labels == (
        [IGNORE_INDEX] * len(prompt) + first + [IGNORE_INDEX] * len(second_prompt) + second + [IGNORE_INDEX]
    )


def test_chat_keys_leading_system_turn_and_leading_assistant_skipped(qwen25_tokenizer, enc):
    conv = [
        {"role": "system", "content": "Be brief."},
        {"role": "assistant", "content": "I speak first and am dropped."},
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": ANSWER},
    ]
    ids, labels = tokenize_conversation(conv, qwen25_tokenizer)
    prompt = expected_prompt(enc, enc(QUESTION), system="Be brief.")
    assert ids == prompt + enc(ANSWER) + [IM_END, NL]
    assert labels[: len(prompt)] == [IGNORE_INDEX] * len(prompt)


def test_text_only_sample_has_no_placeholder(qwen25_tokenizer, enc):
    ids, labels = tokenize_conversation(guide_sample(), qwen25_tokenizer, has_video=False)
    assert ids == expected_prompt(enc, enc(QUESTION), video=False) + enc(ANSWER) + [IM_END, NL]
    assert V not in ids


@pytest.mark.parametrize(
    "conv, has_video, message",
    [
        (guide_sample("<video>\n" + QUESTION), False, "no video"),
        (guide_sample("<video> first <image> second"), True, "separate"),
        (guide_sample(QUESTION, "<video> answer"), True, "assistant turn"),
        ([{"from": "bot", "value": "x"}], True, "unknown conversation role"),
        ([{"speaker": "human", "text": "x"}], True, "from`/`value"),
        (
            [
                {"from": "human", "value": "<video>\na"},
                {"from": "gpt", "value": "b"},
                {"from": "human", "value": "<video>\nc"},
            ],
            True,
            "2 separate",
        ),
    ],
)
def test_template_errors(qwen25_tokenizer, conv, has_video, message):
    with pytest.raises(ValueError, match=message):
        tokenize_conversation(conv, qwen25_tokenizer, has_video=has_video)


def test_render_prompt_text():
    assert render_prompt(QUESTION) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        f"<|im_start|>user\n<video>\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n"
    )
    assert render_prompt("<image>" * 16 + "\n" + QUESTION) == render_prompt(QUESTION)
    assert "<video>" not in render_prompt(QUESTION, has_video=False)
    with pytest.raises(ValueError, match="no video"):
        render_prompt("<video>\n" + QUESTION, has_video=False)


@pytest.mark.parametrize("system", [DEFAULT_SYSTEM_PROMPT, "You are a physiotherapy assistant."])
@pytest.mark.parametrize("has_video", [True, False])
def test_training_prompt_equals_inference_prompt(qwen25_tokenizer, system, has_video):
    ids, labels = tokenize_conversation(guide_sample(), qwen25_tokenizer, system=system, has_video=has_video)
    first_answer = next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)
    prompt_ids = tokenize_with_placeholders(render_prompt(QUESTION, system, has_video), qwen25_tokenizer)
    assert ids[:first_answer] == prompt_ids


def test_tokenize_with_placeholders_pieces(qwen25_tokenizer, enc):
    assert tokenize_with_placeholders("a <video><image> b<video>", qwen25_tokenizer) == enc("a ") + [V] + enc(" b") + [
        V
    ]
    assert tokenize_with_placeholders("<video>", qwen25_tokenizer) == [V]
    assert tokenize_with_placeholders("", qwen25_tokenizer) == []


def test_stop_string_is_eos(qwen25_tokenizer, enc):
    assert enc(STOP_STRING) == [qwen25_tokenizer.eos_token_id]


@pytest.mark.parametrize(
    "record, reason, message",
    [
        ({"video": "a.mp4"}, NO_CONVERSATIONS, "no `conversations`"),
        ({"video": "a.mp4", "conversations": [{"from": "human", "value": "q"}]}, NO_ANSWER, "no answer"),
        ({"video": "a.mp4", "conversations": guide_sample(QUESTION, "<video> a")}, INVALID, "assistant turn"),
        ({"video": "a.mp4", "conversations": guide_sample("<video> one <video> two")}, INVALID, "2 separate"),
        ({"conversations": guide_sample("<video> q")}, INVALID, "no video"),
        ({"video": "a.mp4", "conversations": guide_sample(QUESTION, " ")}, INVALID, r"turn 1 \(assistant\) has no text"),
        ({"video": "", "conversations": guide_sample()}, INVALID, "non-empty path"),
        ({"video": "a.mp4", "conversations": guide_sample(), "split": 3}, INVALID, "`split` must be a string"),
        ([1, 2], INVALID, "expected an object"),
    ],
)
def test_parse_record_rejects_what_training_cannot_use(record, reason, message):
    with pytest.raises(AnnotationError, match=message) as info:
        parse_record(record)
    assert info.value.reason == reason


def test_parse_record_accepts_both_turn_spellings_and_a_system_turn():
    chat = {
        "video": "dataset/squats/a.mp4",
        "conversations": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": QUESTION},
            {"role": "assistant", "content": ANSWER},
        ],
    }
    parsed = parse_record(chat)
    assert parsed.system == "Be brief." and parsed.video == "dataset/squats/a.mp4"
    assert parsed.first_exchange() == (QUESTION, ANSWER)
    llava = parse_record({"video": "dataset/squats/a.mp4", "conversations": guide_sample()})
    assert llava.first_exchange() == (QUESTION, ANSWER) and llava.system is None


def test_processor_prompt_ids_are_the_training_prompt(qwen25_tokenizer):
    processor = VideoTextProcessor(qwen25_tokenizer, num_frames=16)
    ids, labels = processor.conversation_ids(parse_conversation(guide_sample(), "clip.mp4"))
    prompt = processor.prompt_ids(QUESTION)
    assert ids[: len(prompt)] == prompt and prompt.count(IMAGE_TOKEN_INDEX) == 1
    assert labels[len(prompt)] != IGNORE_INDEX
