"""VideoChat: greedy and sampled answers, streaming, timings, stopping at the end of the turn, follow-up questions."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from mobilevideogpt.chat import ChatResult, VideoChat
from mobilevideogpt.checkpoints import FINAL_CHECKPOINT
from mobilevideogpt.processing import IM_END

GUIDE_VIDEO = Path("squats/00093026.mp4")
GUIDE_PROMPT = "Analyze this squats video and provide corrective feedback."

@pytest.fixture(scope="module")
def trained_chat(mvgpt_trained_run):
    return VideoChat.from_pretrained(mvgpt_trained_run / FINAL_CHECKPOINT, device="cpu")


def test_answer_is_greedy_streamed_timed(trained_chat, sample_dataset_dir):
    video = sample_dataset_dir / GUIDE_VIDEO
    pieces: list[str] = []
    first = trained_chat.answer(video, GUIDE_PROMPT, max_new_tokens=6, on_text=pieces.append)
    again = trained_chat.answer(video, GUIDE_PROMPT, max_new_tokens=6)
    assert isinstance(first, ChatResult)
    assert first.prompt == GUIDE_PROMPT
    assert first.text == again.text and first.num_new_tokens == again.num_new_tokens
    assert "".join(pieces).strip() == first.text
    assert 1 <= first.num_new_tokens <= 6
    assert first.finish_reason in ("stop", "length")
    assert len(first.frame_indices) == trained_chat.num_frames == 4
    t = first.timings
    assert t.new_tokens == first.num_new_tokens
    assert min(t.video_decode_s, t.encode_s, t.prefill_s) > 0 and t.decode_s >= 0
    assert t.total_s >= t.video_decode_s + t.encode_s + t.prefill_s + t.decode_s - 1e-6
    assert t.time_to_first_token_s == pytest.approx(t.video_decode_s + t.encode_s + t.prefill_s)
    json.dumps(first.to_dict())  # serialisable

    sampled = [trained_chat.answer(video, "Describe it.", max_new_tokens=5, temperature=1.5, seed=s) for s in (1, 1, 2)]
    assert sampled[0].text == sampled[1].text
    assert sampled[0].prompt == "Describe it." and sampled[0].generation["temperature"] == 1.5


def test_generation_stops_at_im_end_and_strips_it(trained_chat, sample_dataset_dir):
    im_end = trained_chat.tokenizer.convert_tokens_to_ids(IM_END)

    def favour_im_end(module, inputs, output):
        output[..., im_end] += 1e4
        return output

    handle = trained_chat.model.lm_head.register_forward_hook(favour_im_end)
    try:
        # min_new_tokens holds the end-of-turn token back for 3 steps; then it wins at once.
        result = trained_chat.answer(sample_dataset_dir / GUIDE_VIDEO, GUIDE_PROMPT, max_new_tokens=10, min_new_tokens=3)
    finally:
        handle.remove()
    assert result.finish_reason == "stop"
    assert result.num_new_tokens == 4
    assert IM_END not in result.text


def test_an_empty_prompt_is_refused(trained_chat, sample_dataset_dir):
    with pytest.raises(ValueError, match="prompt is empty"):
        trained_chat.answer(sample_dataset_dir / GUIDE_VIDEO, "  ")


def test_max_new_tokens_past_the_models_positions_is_clamped_and_said(trained_chat, sample_dataset_dir, monkeypatch, caplog):
    video = trained_chat.load_video(sample_dataset_dir / GUIDE_VIDEO)
    prompt_length = len(trained_chat.processor.prompt_ids(GUIDE_PROMPT)) - 1 + trained_chat.model.config.visual_tokens_per_video
    monkeypatch.setattr(trained_chat.model.config, "max_position_embeddings", prompt_length + 3)
    with caplog.at_level("WARNING", logger="mobilevideogpt"):
        result = trained_chat.answer(video, GUIDE_PROMPT, max_new_tokens=100000)
    assert result.num_new_tokens <= 3
    assert result.generation["max_new_tokens"] == 3 and result.generation["max_new_tokens_requested"] == 100000
    assert f"max_new_tokens 100000 is past the model's {prompt_length + 3} positions" in caplog.text
    monkeypatch.setattr(trained_chat.model.config, "max_position_embeddings", prompt_length)
    with pytest.raises(ValueError, match="shorten the prompt"):
        trained_chat.answer(video, GUIDE_PROMPT, max_new_tokens=1)


# ---------------------------------------------------------------- follow-up questions: the video's cached prefix

FOLLOW_UP = "Which knee moves first, and how far?"


def last_position_logits(chat, run):
    """The logits of every generation step of `run()` (the last position of each forward)."""
    steps = []
    handle = chat.model.lm_head.register_forward_hook(lambda m, i, out: steps.append(out[0, -1].detach().clone()))
    try:
        result = run()
    finally:
        handle.remove()
    return result, steps


@pytest.mark.parametrize("dtype", ["fp32", "auto"])
def test_follow_up_reuses_the_video_prefix_and_answers_as_afresh(mvgpt_fast_checkpoint, sample_dataset_dir, dtype):
    video = sample_dataset_dir / GUIDE_VIDEO
    chat = VideoChat.from_pretrained(mvgpt_fast_checkpoint, device="cpu", dtype=dtype)
    first = chat.answer(video, GUIDE_PROMPT, max_new_tokens=5, min_new_tokens=5)
    assert first.timings.cached_tokens == 0
    tokens = {"max_new_tokens": 6, "min_new_tokens": 6}
    follow, cached_steps = last_position_logits(chat, lambda: chat.answer(video, FOLLOW_UP, **tokens))
    visual = chat.model.config.visual_tokens_per_video
    # Everything before the question came from the cache: system prompt, header, the visual tokens, the newline.
    assert follow.timings.cached_tokens == len(chat.question_independent_prefix()) - 1 + visual > visual
    assert follow.timings.video_decode_s == 0 and follow.frame_indices == first.frame_indices
    assert follow.video_path == first.video_path

    fresh_chat = VideoChat(chat.model, chat.tokenizer, plan=chat.plan, keep_video=False)
    fresh, fresh_steps = last_position_logits(fresh_chat, lambda: fresh_chat.answer(video, FOLLOW_UP, **tokens))
    assert fresh.timings.cached_tokens == 0
    assert len(cached_steps) == len(fresh_steps) == 6
    for cached_logits, fresh_logits in zip(cached_steps, fresh_steps):
        torch.testing.assert_close(cached_logits, fresh_logits, rtol=1e-4, atol=1e-4)
        assert int(cached_logits.argmax()) == int(fresh_logits.argmax())
    assert follow.text == fresh.text and follow.num_new_tokens == fresh.num_new_tokens

    # The same question again (the cache now also ends where the last answer did) is still served from the prefix.
    again = chat.answer(video, FOLLOW_UP, **tokens)
    assert again.text == follow.text and again.timings.cached_tokens == follow.timings.cached_tokens


def test_the_cache_serves_only_the_same_video(mvgpt_fast_checkpoint, sample_dataset_dir, tmp_path):
    chat = VideoChat.from_pretrained(mvgpt_fast_checkpoint, device="cpu", dtype="fp32")
    tokens = {"max_new_tokens": 2}
    clip = tmp_path / "clip.mp4"
    shutil.copy(sample_dataset_dir / GUIDE_VIDEO, clip)
    chat.answer(clip, GUIDE_PROMPT, **tokens)
    assert chat.answer(clip, FOLLOW_UP, **tokens).timings.cached_tokens > 0
    # The file changed on disk: decoded and encoded again.
    other = sorted(sample_dataset_dir.glob("*/*.mp4"))[-1]
    shutil.copy(other, clip)
    changed = chat.answer(clip, FOLLOW_UP, **tokens)
    assert changed.timings.cached_tokens == 0 and changed.timings.video_decode_s > 0

    # Frames passed in: the same frames are served, other frames are not.
    frames = chat.load_video(sample_dataset_dir / GUIDE_VIDEO)
    chat.answer(frames, GUIDE_PROMPT, **tokens)
    assert chat.answer(frames, FOLLOW_UP, **tokens).timings.cached_tokens > 0
    assert chat.answer(chat.load_video(sample_dataset_dir / GUIDE_VIDEO), FOLLOW_UP, **tokens).timings.cached_tokens > 0
    assert chat.answer(chat.load_video(other), FOLLOW_UP, **tokens).timings.cached_tokens == 0

    # A question that puts the video elsewhere in its text does not share the prefix; forget_video drops it.
    chat.answer(frames, GUIDE_PROMPT, **tokens)
    assert chat.answer(frames, "Before anything: <video> what is shown?", **tokens).timings.cached_tokens == 0
    chat.answer(frames, GUIDE_PROMPT, **tokens)
    chat.forget_video()
    assert chat.answer(frames, FOLLOW_UP, **tokens).timings.cached_tokens == 0


def test_the_cache_keeps_to_its_system_prompt(mvgpt_fast_checkpoint, sample_dataset_dir):
    chat = VideoChat.from_pretrained(mvgpt_fast_checkpoint, device="cpu", dtype="fp32")
    frames = chat.load_video(sample_dataset_dir / GUIDE_VIDEO)
    tokens = {"max_new_tokens": 3, "min_new_tokens": 3}
    coach = "You are a strict fitness coach."
    chat.answer(frames, GUIDE_PROMPT, system_prompt=coach, **tokens)
    follow = chat.answer(frames, FOLLOW_UP, system_prompt=coach, **tokens)
    visual = chat.model.config.visual_tokens_per_video
    assert follow.timings.cached_tokens == len(chat.question_independent_prefix(coach)) - 1 + visual
    fresh = VideoChat(chat.model, chat.tokenizer, plan=chat.plan, keep_video=False)
    assert follow.text == fresh.answer(frames, FOLLOW_UP, system_prompt=coach, **tokens).text
    # The chat's own system prompt does not take that prefix (its tokens differ).
    assert chat.answer(frames, FOLLOW_UP, **tokens).timings.cached_tokens == 0


def test_a_draft_gives_the_same_answer_in_fewer_passes(mvgpt_fast_checkpoint, sample_dataset_dir):
    video = sample_dataset_dir / GUIDE_VIDEO
    chat = VideoChat.from_pretrained(mvgpt_fast_checkpoint, device="cpu")
    tokens = {"max_new_tokens": 9, "min_new_tokens": 9}
    plain = chat.answer(video, GUIDE_PROMPT, **tokens)
    assert len(plain.token_ids) == plain.num_new_tokens == 9 and plain.draft_accepted == 0
    assert "token_ids" not in plain.to_dict()

    passes = []
    handle = chat.model.lm_head.register_forward_hook(lambda module, inputs, output: passes.append(output.shape[1]))
    pieces: list[str] = []
    try:
        chat.forget_video()
        fresh = chat.answer(video, GUIDE_PROMPT, **tokens, draft=plain.token_ids, on_text=pieces.append)
        # Served from the kept prefix, a follow-up checks the draft the same way.
        follow = chat.answer(video, GUIDE_PROMPT, **tokens, draft=plain.token_ids[2:])
    finally:
        handle.remove()
    assert fresh.token_ids == plain.token_ids and fresh.text == plain.text == "".join(pieces).strip()
    assert follow.token_ids == plain.token_ids and follow.timings.cached_tokens > 0
    # 1 prompt pass + 1 pass of 8 rows instead of 9 passes; every draft token after the first confirmed.
    assert passes[:2] == [1, 8] and fresh.draft_accepted == 7
    assert fresh.timings.new_tokens == 9 and fresh.timings.decode_s > 0

    sampled = chat.answer(video, GUIDE_PROMPT, max_new_tokens=5, temperature=1.5, seed=3, draft=plain.token_ids)
    again = chat.answer(video, GUIDE_PROMPT, max_new_tokens=5, temperature=1.5, seed=3)
    assert sampled.token_ids == again.token_ids and sampled.draft_accepted == 0  # sampling ignores drafts
    with pytest.raises(ValueError, match="token ids"):
        chat.answer(video, GUIDE_PROMPT, max_new_tokens=2, draft=[1, 10**9])
