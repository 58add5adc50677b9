"""The visual-token budget: parsing, the counts it promises, which tokens it keeps, that training, inference and the
live cache select the same ones, that the default is the published pipeline bit for bit, and that a checkpoint
records the budget it was trained with."""

import json
import logging

import pytest
import torch
import torch.nn.functional as F

from mobilevideogpt.model.modeling import MobileVideoGPTQwenForCausalLM
from mobilevideogpt.model.tiny import tiny_config
from mobilevideogpt.model.token_budget import (
    ALL,
    context_tokens_per_frame,
    keep_context_tokens,
    parse_visual_tokens,
    pool_scores,
    resolve_budget,
    set_visual_token_budget,
)

FULL, MINIMUM = 2402, 114  # the published geometry: 16·144 + 2·49, and 2·49 + one token per frame


@pytest.mark.parametrize(
    "text, expected",
    [("all", ALL), ("ALL", ALL), ("600", 600), ("0.25", 0.25), ("25%", 0.25), ("1.0", 1.0), (None, None)],
)
def test_parse_accepts_counts_fractions_and_all(text, expected):
    assert parse_visual_tokens(text) == expected


@pytest.mark.parametrize("text", ["0", "-3", "1.5", "abc", "0%", "nan", "120%"])
def test_parse_rejects_what_is_no_budget_and_says_what_is(text):
    with pytest.raises(ValueError, match="--visual-tokens"):
        parse_visual_tokens(text)


@pytest.mark.parametrize(
    "request_, tokens", [(0.5, 1201), (0.25, 600), (0.1, 240), (600, 600), (MINIMUM, MINIMUM), (1.0, None), (FULL, None)]
)
def test_resolve_gives_the_promised_count(request_, tokens):
    assert resolve_budget(request_, FULL, MINIMUM) == tokens


@pytest.mark.parametrize("request_", [MINIMUM - 1, FULL + 1, 0.01])
def test_resolve_names_the_range_it_can_keep(request_):
    with pytest.raises(ValueError, match=f"between {MINIMUM} .* and {FULL}"):
        resolve_budget(request_, FULL, MINIMUM)


@pytest.mark.parametrize("budget", [FULL - 1, 1201, 600, 240, MINIMUM])
def test_context_tokens_spread_evenly_over_the_frames(budget):
    counts = context_tokens_per_frame(budget, 16, 98)
    assert sum(counts) + 98 == budget
    assert max(counts) - min(counts) <= 1 and min(counts) >= 1 and max(counts) <= 144
    assert counts == sorted(counts, reverse=True)  # the first frames take the remainder


def test_each_frame_keeps_its_highest_scoring_tokens_in_raster_order():
    tokens = torch.arange(2 * 2 * 6 * 1, dtype=torch.float32).reshape(2, 2, 6, 1)
    scores = torch.tensor(
        [[[0.1, 0.9, 0.3, 0.3, 0.0, 0.8], [5, 4, 3, 2, 1, 0]], [[0, 0, 0, 0, 0, 1], [1, 1, 1, 1, 1, 1]]],
        dtype=torch.float32,
    )
    kept = keep_context_tokens(tokens, scores, [3, 2])
    # video 0 frame 0: scores 0.9 (1), 0.8 (5), then a tie at 0.3 taken by the earlier token (2) → raster 1, 2, 5
    assert kept[0, :, 0].tolist() == [1, 2, 5, 6, 7]
    # video 1 frame 0: 1.0 at 5, then the tie at 0 goes to the earliest (0, 1) → raster 0, 1, 5
    assert kept[1, :, 0].tolist() == [12, 13, 17, 18, 19]


def test_scores_pool_onto_the_projector_grid_as_the_projector_pools():
    scores = torch.rand(3, 196)
    pooled = pool_scores(scores, 12)
    expected = F.adaptive_avg_pool2d(scores.reshape(3, 1, 14, 14), 12).reshape(3, 144)
    torch.testing.assert_close(pooled, expected)


# ---------------------------------------------------------------- in the model (tiny, published geometry)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return MobileVideoGPTQwenForCausalLM(tiny_config()).eval()


@pytest.fixture(scope="module")
def video():
    generator = torch.Generator().manual_seed(3)
    return torch.randn(1, 16, 3, 224, 224, generator=generator), torch.randn(1, 16, 3, 224, 224, generator=generator)


def encode(model, video, budget):
    model.config.visual_token_budget = budget
    try:
        with torch.no_grad():
            return model.model.encode_videos(*video)
    finally:
        model.config.visual_token_budget = None


def test_the_default_is_the_published_pipeline_bit_for_bit(model, video):
    """No budget runs no scoring and gives every token; a budget of all of them gives the very same tensor."""
    calls = []
    tower = model.model.image_vision_tower
    original = tower.features_and_scores
    tower.features_and_scores = lambda *a, **k: calls.append(k) or original(*a, **k)
    try:
        default = encode(model, video, None)
        everything = encode(model, video, FULL)
    finally:
        del tower.features_and_scores
    assert calls == [{"with_scores": False}, {"with_scores": True}]
    assert default.shape == (1, FULL, model.config.hidden_size)
    assert torch.equal(default, everything)
    with torch.no_grad():  # and the pieces, composed as before the budget existed
        features = tower(video[1][0]).reshape(1, 16, 196, -1)
        context = model.model.image_mm_projector(features.flatten(0, 1))
    assert torch.equal(default[0, : 16 * 144], context.reshape(-1, model.config.hidden_size))


@pytest.mark.parametrize("fraction", [0.5, 0.25, 0.1])
def test_budgets_keep_the_promised_count_of_the_full_tokens_highest_scored(model, video, fraction):
    budget = resolve_budget(fraction, FULL, MINIMUM)
    full, kept = encode(model, video, None), encode(model, video, budget)
    assert kept.shape == (1, budget, model.config.hidden_size)
    assert torch.equal(kept[0, -98:], full[0, -98:])  # every video token, last as published
    with torch.no_grad():
        _, scores = model.model.image_vision_tower.features_and_scores(video[1][0])
    pooled = pool_scores(scores, 12)  # (16, 144)
    counts = context_tokens_per_frame(budget, 16, 98)
    start = 0
    for frame, count in enumerate(counts):
        rows = kept[0, start : start + count]
        start += count
        context = full[0, frame * 144 : (frame + 1) * 144]
        positions = [int((context == row).all(dim=-1).nonzero()[0]) for row in rows]
        assert positions == sorted(positions), "not in raster order"
        best = set(pooled[frame].argsort(descending=True, stable=True)[:count].tolist())
        assert set(positions) == best, f"frame {frame} kept other tokens than its {count} best"


def test_cls_scores_are_the_attention_clip_itself_computes(model, video):
    """The [CLS] row of the last run layer's attention, as transformers' eager attention returns it."""
    from transformers import CLIPVisionModel

    tower = model.model.image_vision_tower
    frames = video[1][0, :3]
    _, scores = tower.features_and_scores(frames)
    reference = CLIPVisionModel(tower.config)
    reference.load_state_dict(tower.vision_tower.vision_model.state_dict())
    reference.config._attn_implementation = "eager"
    with torch.no_grad():
        attentions = reference(pixel_values=frames, output_attentions=True).attentions
    expected = attentions[tower.layers_used - 1].mean(dim=1)[:, 0, 1:]
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-6)
    assert bool((scores.sum(dim=-1) < 1).all())


def test_training_forward_reads_the_same_tokens_as_inference(model, video):
    """The loss path (input ids + frames, as the collator gives them) splices exactly `encode_videos`' tokens."""
    budget = 600
    ids = torch.tensor([[5, 6, -200, 7, 8]])
    model.config.visual_token_budget = budget
    seen = {}
    hook = model.model.layers[0].register_forward_pre_hook(
        lambda m, args, kwargs: seen.update(x=args[0] if args else kwargs["hidden_states"]), with_kwargs=True
    )
    try:
        with torch.no_grad():
            out = model(input_ids=ids, images=video[0], context_images=video[1], labels=ids.clone())
            visual = model.model.encode_videos(*video)
    finally:
        hook.remove()
        model.config.visual_token_budget = None
    assert out.logits.shape[1] == ids.shape[1] - 1 + budget
    assert torch.equal(seen["x"][0, 2 : 2 + budget], visual[0])


def test_cached_clip_features_and_scores_give_the_same_tokens(model, video):
    """The live cache's path: per-frame features and scores computed earlier stand in for the CLIP frames."""
    model.config.visual_token_budget = 600
    try:
        with torch.no_grad():
            features, scores = zip(*(model.model.encode_clip_frames(video[1][0, i : i + 1]) for i in range(16)))
            cached = model.model.encode_videos(video[0], None, torch.cat(features)[None], torch.cat(scores)[None])
            direct = model.model.encode_videos(*video)
            with pytest.raises(ValueError, match="clip_scores"):
                model.model.encode_videos(video[0], None, torch.cat(features)[None])
    finally:
        model.config.visual_token_budget = None
    torch.testing.assert_close(cached, direct, rtol=0, atol=1e-6)


def test_the_config_rejects_a_budget_outside_what_it_can_keep():
    config = tiny_config()
    set_visual_token_budget(config, 0.25)
    assert config.visual_token_budget == 600 and config.visual_tokens_per_video == 600
    set_visual_token_budget(config, ALL)
    assert config.visual_token_budget is None and config.visual_tokens_per_video == FULL
    with pytest.raises(Exception, match="between 114"):  # huggingface_hub's validation error wraps the ValueError
        tiny_config(visual_token_budget=50)


# ---------------------------------------------------------------- recorded in a checkpoint, used when loading


@pytest.fixture(scope="module")
def budget_run(tmp_path_factory, mvgpt_fast_checkpoint):
    """A training checkpoint trained (by the trainer's save path) with a budget of 200 tokens on the fast geometry."""
    from tests.trained_checkpoint import make_training_checkpoint

    run = tmp_path_factory.mktemp("budget_run") / "run"
    make_training_checkpoint(mvgpt_fast_checkpoint, run, visual_tokens="200")
    return run


def test_a_checkpoint_records_its_budget_and_inference_uses_it(budget_run, caplog):
    from mobilevideogpt import VideoChat

    assert json.loads((budget_run / "checkpoint-final" / "config.json").read_text())["visual_token_budget"] == 200
    with caplog.at_level(logging.WARNING, logger="mobilevideogpt"):
        chat = VideoChat.from_pretrained(budget_run, device="cpu")
    assert chat.visual_tokens == 200 and not caplog.records
    full = chat.model.config.full_visual_tokens_per_video
    with caplog.at_level(logging.WARNING, logger="mobilevideogpt"):
        other = VideoChat.from_pretrained(budget_run, device="cpu", visual_tokens=ALL)
    assert other.visual_tokens == full
    assert f"trained with 200 of {full} visual tokens" in caplog.text and f"running with all {full}" in caplog.text


def test_a_base_checkpoint_runs_with_a_budget_training_free(mvgpt_fast_checkpoint, caplog):
    from mobilevideogpt import VideoChat

    with caplog.at_level(logging.WARNING, logger="mobilevideogpt"):
        chat = VideoChat.from_pretrained(mvgpt_fast_checkpoint, device="cpu", visual_tokens=0.5)
    full = chat.model.config.full_visual_tokens_per_video
    assert chat.visual_tokens == round(full / 2)
    assert "training-free" in caplog.text
    with pytest.raises(Exception, match="between"):
        VideoChat.from_pretrained(mvgpt_fast_checkpoint, device="cpu", visual_tokens=3)


@pytest.mark.parametrize("recorded", [50, 2.5, "600"])
def test_a_config_json_with_an_impossible_budget_names_the_file(mvgpt_fast_checkpoint, tmp_path, recorded):
    import shutil

    from mobilevideogpt import VideoChat
    from mobilevideogpt.errors import ModelLoadError

    folder = shutil.copytree(mvgpt_fast_checkpoint, tmp_path / "edited")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "visual_token_budget": recorded}))
    with pytest.raises(ModelLoadError, match="must be a whole number between") as raised:
        VideoChat.from_pretrained(folder, device="cpu")
    assert str(folder / "config.json") in str(raised.value) and "\n" not in str(raised.value)


def test_a_merged_model_keeps_the_budget_it_was_trained_with(budget_run, tmp_path):
    from mobilevideogpt import VideoChat
    from mobilevideogpt.export import merge_checkpoint

    merged = merge_checkpoint(budget_run, tmp_path / "merged")
    assert json.loads((merged / "config.json").read_text())["visual_token_budget"] == 200
    assert VideoChat.from_pretrained(merged, device="cpu").visual_tokens == 200
