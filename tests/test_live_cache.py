"""Per-frame work cached across overlapping windows gives exactly the uncached result: the model's
`clip_features` path, the frame cache, and whole live sessions with and without it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mobilevideogpt.chat import VideoChat
from mobilevideogpt.live.cache import FrameCache, window_inputs
from mobilevideogpt.live.frames import VideoFileSource
from mobilevideogpt.live.session import LiveSession
from mobilevideogpt.live.windows import WindowPlan
from mobilevideogpt.processing import render_prompt, tokenize_with_placeholders
from mobilevideogpt.qved.sessions import make_sessions

PROMPT = "Analyze this exercise video and provide corrective feedback."


@pytest.fixture(scope="module")
def chat(mvgpt_fast_checkpoint):
    return VideoChat.from_pretrained(mvgpt_fast_checkpoint, device="cpu")


@pytest.fixture(scope="module")
def budget_chat(mvgpt_fast_checkpoint):
    """The same model with half its visual tokens: the cache then keeps each frame's [CLS]-attention scores too."""
    return VideoChat.from_pretrained(mvgpt_fast_checkpoint, device="cpu", visual_tokens=0.5)


@pytest.fixture(scope="module")
def session_video(tmp_path_factory):
    labels = make_sessions(tmp_path_factory.mktemp("cache_sessions"), count=1, seed=2, segment_s=(3.0, 4.0), size=(96, 72))
    return labels.parent / "session_00.mp4"


def _prompt_ids(chat):
    return torch.tensor([tokenize_with_placeholders(render_prompt(PROMPT), chat.tokenizer)])


def test_clip_features_path_equals_the_context_images_path(chat):
    inner = chat.model.model
    frames = chat.num_frames
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(1, frames, 3, chat.image_size, chat.image_size, generator=generator)
    context = torch.randn(1, frames, 3, chat.image_size, chat.image_size, generator=generator)
    ids = _prompt_ids(chat)
    with torch.inference_mode():
        full = inner.prepare_multimodal_inputs(ids, images=images, context_images=context, padding_side="left")
        # Features computed one frame at a time, as a cache fills up over a stream.
        features = torch.cat([inner.clip_frame_features(context[0, i : i + 1]) for i in range(frames)])[None]
        cached = inner.prepare_multimodal_inputs(ids, images=images, clip_features=features, padding_side="left")
    assert torch.equal(full.inputs_embeds, cached.inputs_embeds)
    assert torch.equal(full.attention_mask, cached.attention_mask)
    with pytest.raises(ValueError, match="not both"):
        inner.prepare_multimodal_inputs(ids, images=images, context_images=context, clip_features=features)
    with pytest.raises(ValueError, match="clip_features"):
        inner.prepare_multimodal_inputs(ids, images=images, clip_features=features[:, :2])


def test_frame_cache_reuses_frames_and_matches_uncached_inputs(chat):
    plan = WindowPlan.create(10.0, window_s=4, stride_s=2, num_frames=chat.num_frames)
    rng = np.random.default_rng(0)
    video = rng.integers(0, 256, (80, 48, 64, 3), dtype=np.uint8)
    cache = FrameCache(chat.model.model.encode_clip_frames, chat.image_size)
    for k in (1, 2, 3, 4):  # windows 3 and 4 are full and share frames with the ones before
        window = plan.window(k)
        frames = [video[i] for i in window.frame_indices]
        cached = cache.inputs(frames, window, "v")
        plain = window_inputs(frames, window, chat.image_size, "v")
        assert torch.equal(cached.frames, plain.frames) and torch.equal(cached.context_frames, plain.context_frames)
        with torch.inference_mode():
            assert torch.equal(cached.context_features, chat.model.model.clip_frame_features(plain.context_frames))
            ids = _prompt_ids(chat)
            a = chat.model.model.prepare_multimodal_inputs(
                ids, images=plain.frames[None], context_images=plain.context_frames[None], padding_side="left"
            )
            b = chat.model.model.prepare_multimodal_inputs(
                ids, images=cached.frames[None], clip_features=cached.context_features[None], padding_side="left"
            )
        assert torch.equal(a.inputs_embeds, b.inputs_embeds)
    shared = len(set(plan.window(3).frame_indices) & set(plan.window(4).frame_indices))
    assert shared > 0 and cache.hits >= shared
    cache.release_before(plan.window(4).start_frame)
    assert len(cache) == len(set(plan.window(4).frame_indices))


@pytest.mark.parametrize("which", ["chat", "budget_chat"])
def test_live_session_feeds_the_model_the_same_with_and_without_the_cache(which, request, session_video, monkeypatch):
    chat = request.getfixturevalue(which)
    inner = chat.model.model
    original = inner.encode_videos
    spliced = []  # each window's visual tokens, as the LLM receives them

    def recording(*args, **kwargs):
        out = original(*args, **kwargs)
        spliced.append(out.clone())
        return out

    monkeypatch.setattr(inner, "encode_videos", recording)
    runs = {}
    for cache in (True, False):
        spliced.clear()
        session = LiveSession(chat, prompt=PROMPT, window_s=4, stride_s=2, cache=cache, max_new_tokens=2)
        runs[cache] = (session.run(VideoFileSource(session_video)), list(spliced))
    (with_cache, cached_inputs), (without, plain_inputs) = runs[True], runs[False]
    assert len(cached_inputs) == len(plain_inputs) == with_cache.summary.windows_answered >= 3
    assert all(torch.equal(a, b) for a, b in zip(cached_inputs, plain_inputs, strict=True))
    assert all(tokens.shape[1] == chat.visual_tokens for tokens in cached_inputs)
    assert [e.text for e in with_cache.events] == [e.text for e in without.events]
    assert with_cache.summary.cache_hits > 0 and without.summary.cache_hits is None
