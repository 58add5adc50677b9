"""Token pipeline pieces: ETP math, frame scoring, frame gathering/regrouping, config validation, 2402 tokens."""

import math

import pytest
import torch
import torch.nn.functional as F

from mobilevideogpt.model.configuration import MobileVideoGPTQwenConfig
from mobilevideogpt.model.frame_selection import frame_attention_scores, select_frames
from mobilevideogpt.model.modeling import MobileVideoGPTQwenForCausalLM
from mobilevideogpt.model.projector import EfficientTokenProjector, pool_frame_tokens, tokens_to_grid
from mobilevideogpt.model.tiny import tiny_config
from mobilevideogpt.model.visual_tokens import gather_selected_frames, regroup_per_chunk, split_chunks


def small_vocab(**overrides):
    return tiny_config(vocab_size=512, bos_token_id=None, eos_token_id=None, **overrides)


# ---------------------------------------------------------------- ETP projector


def direct_etp(proj: EfficientTokenProjector, x: torch.Tensor) -> torch.Tensor:
    """ETP written out by hand: MLP, row-major grid, explicit adaptive windows, explicit 3×3 depthwise conv."""
    w1, b1 = proj.mlp.mlp[0].weight, proj.mlp.mlp[0].bias
    w2, b2 = proj.mlp.mlp[2].weight, proj.mlp.mlp[2].bias
    h = x @ w1.T + b1
    h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))  # exact GELU
    h = h @ w2.T + b2  # (N, S, C)
    n, s, c = h.shape
    side = math.isqrt(s)
    grid = torch.zeros(n, c, side, side)
    for t in range(s):
        grid[:, :, t // side, t % side] = h[:, t]
    out_side = proj.pool_side
    pooled = torch.zeros(n, c, out_side, out_side)
    for i in range(out_side):
        r0, r1 = (i * side) // out_side, -((-(i + 1) * side) // out_side)
        for j in range(out_side):
            c0, c1 = (j * side) // out_side, -((-(j + 1) * side) // out_side)
            pooled[:, :, i, j] = grid[:, :, r0:r1, c0:c1].mean(dim=(-1, -2))
    wk, bk = proj.peg.peg[0].weight[:, 0], proj.peg.peg[0].bias  # (C, 3, 3)
    padded = F.pad(pooled, (1, 1, 1, 1))
    conv = torch.zeros_like(pooled) + bk[None, :, None, None]
    for di in range(3):
        for dj in range(3):
            conv += wk[None, :, di, dj, None, None] * padded[:, :, di : di + out_side, dj : dj + out_side]
    out = conv + pooled
    return out.flatten(2).transpose(1, 2)


@pytest.mark.parametrize("kind,expected_tokens", [("image", 144), ("video", 49)])
def test_etp_matches_direct_computation(kind, expected_tokens):
    torch.manual_seed(0)
    proj = EfficientTokenProjector(in_dim=12, out_dim=8, kind=kind)
    torch.nn.init.normal_(proj.peg.peg[0].bias)
    x = torch.randn(3, 196, 12)
    with torch.no_grad():
        got, want = proj(x), direct_etp(proj, x)
    assert got.shape == (3, expected_tokens, 8)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_image_pooling_windows_overlap_as_pytorch_adaptive_pool():
    # 14 → 12: window i covers [floor(14i/12), ceil(14(i+1)/12)) — size 2, consecutive windows overlap.
    starts = [(i * 14) // 12 for i in range(12)]
    ends = [-((-(i + 1) * 14) // 12) for i in range(12)]
    assert (starts[:3], ends[:3]) == ([0, 1, 2], [2, 3, 4])
    grid = torch.arange(14.0).repeat(14, 1)[None, None]  # value = column index
    pooled = F.adaptive_avg_pool2d(grid, 12)[0, 0, 0]
    assert pooled.tolist() == [(s + e - 1) / 2 for s, e in zip(starts, ends, strict=True)]


def test_etp_rejects_non_square_input_and_unknown_kind():
    proj = EfficientTokenProjector(4, 4, "video")
    with pytest.raises(ValueError, match="square"):
        proj(torch.randn(1, 50, 4))
    with pytest.raises(ValueError, match="kind"):
        EfficientTokenProjector(4, 4, "audio")


def test_per_frame_pooling_is_exact_2x2_mean():
    feats = torch.randn(2, 3, 196, 5)
    pooled = pool_frame_tokens(feats)
    grid = feats.reshape(2, 3, 14, 14, 5)
    want = grid.reshape(2, 3, 7, 2, 7, 2, 5).mean(dim=(3, 5)).reshape(2, 3, 49, 5)
    torch.testing.assert_close(pooled, want)


# ---------------------------------------------------------------- frame scoring


def test_frame_scores_hand_computed_example():
    # 4 frames of one 1-D token each: x = [0, 2, 0, 1], scale 1/√1. Logits x_q·x_k per query row:
    #   q0, q2: all 0 → 1/4 each
    #   q1: [0, 4, 0, 2] → [1, e⁴, 1, e²] / (2 + e⁴ + e²)
    #   q3: [0, 2, 0, 1] → [1, e², 1, e] / (2 + e² + e)
    x = torch.tensor([0.0, 2.0, 0.0, 1.0]).reshape(1, 4, 1, 1)
    e = math.e
    z1, z3 = 2 + e**4 + e**2, 2 + e**2 + e
    s0 = 0.5 + 1 / z1 + 1 / z3  # = s2
    s1 = 0.5 + e**4 / z1 + e**2 / z3
    s3 = 0.5 + e**2 / z1 + e / z3
    scores = frame_attention_scores(x)[0]
    torch.testing.assert_close(scores, torch.tensor([s0, s1, s0, s3]))
    assert s1 > s3 > s0
    assert select_frames(x, k=2).tolist() == [[1, 3]]
    assert select_frames(x, k=2, largest=False).tolist() == [[0, 2]]
    assert select_frames(x, k=1).tolist() == [[1]]


def test_frame_scores_equal_attention_times_membership():
    torch.manual_seed(1)
    feats = torch.randn(5, 8, 6, 16)  # 5 chunks, 8 frames, 6 tokens — more than one scoring step
    c, t, n, d = feats.shape
    x = feats.reshape(c, t * n, d)
    attn = torch.softmax(x @ x.transpose(1, 2) / math.sqrt(d), dim=-1)
    membership = F.one_hot(torch.arange(t).repeat_interleave(n), t).float()  # (T·L, T)
    want = (attn @ membership).sum(dim=1)
    got = frame_attention_scores(feats)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.sum(-1), torch.full((c,), float(t * n)))
    idx = select_frames(feats, k=4)
    assert idx.shape == (5, 4) and bool((idx[:, 1:] > idx[:, :-1]).all())
    assert set(idx[0].tolist()) == set(want[0].topk(4).indices.tolist())


# ---------------------------------------------------------------- gathering and regrouping


def test_gather_selected_frames_and_regroup_order():
    v, t, cs = 2, 16, 8
    frames = torch.arange(v * t, dtype=torch.float).reshape(v, t, 1, 1, 1).expand(v, t, 3, 2, 2)
    idx = torch.tensor([[[0, 2, 5, 7], [1, 3, 4, 6]], [[4, 5, 6, 7], [0, 1, 2, 3]]])
    picked = gather_selected_frames(frames, idx, cs)
    assert picked.shape == (2, 8, 3, 2, 2)
    assert picked[:, :, 0, 0, 0].tolist() == [
        [0, 2, 5, 7, 9, 11, 12, 14],
        [20, 21, 22, 23, 24, 25, 26, 27],
    ]
    assert split_chunks(frames, cs).shape == (2, 2, 8, 3, 2, 2)

    # Tokens labelled (frame, token): chunk p holds frames 4p..4p+3, frame-major, 49 tokens each.
    frame_tokens = torch.zeros(v, 8, 49, 2)
    frame_tokens[..., 0] = torch.arange(8).reshape(1, 8, 1)
    frame_tokens[..., 1] = torch.arange(49).reshape(1, 1, 49)
    chunks = regroup_per_chunk(frame_tokens, num_chunks=2)
    assert chunks.shape == (4, 196, 2)
    q = torch.arange(196)
    assert torch.equal(chunks[1, :, 0], (4 + q // 49).float())  # video 0, chunk 1
    assert torch.equal(chunks[1, :, 1], (q % 49).float())
    # The ETP's 14×14 view mixes frames: token 48 (row 3, col 6) is frame a, token 49 (row 3, col 7) frame b.
    grid = tokens_to_grid(chunks[:1])  # (1, 2, 14, 14)
    assert grid[0, 0, 3, 6] == 0 and grid[0, 0, 3, 7] == 1 and grid[0, 1, 3, 7] == 0


# ---------------------------------------------------------------- config


def test_config_defaults_are_the_published_pipeline():
    cfg = MobileVideoGPTQwenConfig.published()
    assert cfg.model_type == "MobileVideoGPT_qwen"
    assert (cfg.num_frames, cfg.chunk_size, cfg.num_select_k_frames_in_chunk, cfg.topk) == (16, 8, 4, True)
    assert cfg.mm_vision_select_layer == -2 and cfg.mm_vision_select_feature == "patch"
    assert cfg.visual_tokens_per_video == 2402
    assert cfg.videomamba().embed_dim == 576 and cfg.clip_vision().hidden_size == 768


def test_config_reads_published_fields_and_ignores_mm_hidden_size():
    # Field values as the published config.json is expected to carry them (upstream `arch.py::initialize_vision_modules` and `train/train.py`); extra
    # informational fields pass through.
    cfg = MobileVideoGPTQwenConfig(
        hidden_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        num_hidden_layers=1,
        mm_vision_tower="OpenGVLab/VideoMamba/videomamba_m16_25M_f8_res224.pth",
        image_mm_vision_tower="openai/clip-vit-base-patch16",
        mm_hidden_size=768,
        image_mm_hidden_size=768,
        mm_projector_lr=2e-5,
        image_aspect_ratio="pad",
        rope_scaling=None,
        videomamba_config={**tiny_config().videomamba_config},
        clip_vision_config={**tiny_config().clip_vision_config},
    )
    assert cfg.mm_projector_lr == 2e-5
    with torch.device("meta"):
        model = MobileVideoGPTQwenForCausalLM(cfg)
    # The video projector's input width comes from VideoMamba (32 here), never from mm_hidden_size (768).
    assert model.model.mm_projector.mlp.mlp[0].in_features == 32
    assert model.model.image_mm_projector.mlp.mlp[0].in_features == 32


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"num_select_k_frames_in_chunk": 2}, "8 frames"),
        ({"num_frames": 12, "num_context_images": 12}, "multiple of chunk_size"),
        ({"num_context_images": 8}, "must equal num_context_images"),
        ({"chunk_size": 4, "num_select_k_frames_in_chunk": 2}, "perfect square"),
        ({"num_select_k_frames_in_chunk": 9}, "between 1 and chunk_size"),
        ({"mm_projector_type": "mlp2x_gelu"}, "only 'etp'"),
        ({"mm_vision_select_feature": "cls_patch"}, "only 'patch'"),
        ({"mm_use_im_start_end": True}, "mm_use_im_start_end"),
    ],
)
def test_invalid_pipeline_combinations_fail_clearly(overrides, message):
    with pytest.raises(Exception, match=message):
        small_vocab(**overrides)


def test_k_override_is_validated_by_the_model():
    with pytest.raises(ValueError, match="8 frames"):
        MobileVideoGPTQwenForCausalLM(small_vocab(), num_select_k_frames_in_chunk=2)


# ---------------------------------------------------------------- whole pipeline at full geometry


@pytest.fixture(scope="module")
def full_geometry_model():
    torch.manual_seed(0)
    return MobileVideoGPTQwenForCausalLM(small_vocab()).eval()


def test_2402_visual_tokens_for_16_frames(full_geometry_model):
    torch.manual_seed(0)
    images, context = torch.randn(1, 16, 3, 224, 224), torch.randn(1, 16, 3, 224, 224)
    with torch.no_grad():
        tokens = full_geometry_model.model.encode_videos(images, context)
    assert tokens.shape == (1, 2402, 32)


def test_pipeline_feeds_selected_frames_to_videomamba_and_merges_context_first(full_geometry_model):
    torch.manual_seed(2)
    model = full_geometry_model.model
    images, context = torch.randn(1, 16, 3, 224, 224), torch.randn(1, 16, 3, 224, 224)
    seen = {}
    hook = model.vision_tower.register_forward_hook(lambda m, args, out: seen.update(clip=args[0], out=out))
    try:
        with torch.no_grad():
            tokens = model.encode_videos(images, context)
    finally:
        hook.remove()
    with torch.no_grad():
        clip_feats = model.image_vision_tower(context[0]).reshape(2, 8, 196, -1)
        idx = select_frames(clip_feats, 4)
        expected_frames = torch.cat([images[0, :8][idx[0]], images[0, 8:][idx[1]]])
        assert torch.equal(seen["clip"][0], expected_frames)
        context_tokens = model.image_mm_projector(clip_feats.reshape(16, 196, -1))
        video_tokens = model.mm_projector(regroup_per_chunk(pool_frame_tokens(seen["out"]), 2))
    torch.testing.assert_close(tokens[0, : 16 * 144], context_tokens.reshape(-1, 32))
    torch.testing.assert_close(tokens[0, 16 * 144 :], video_tokens.reshape(-1, 32))


def test_video_input_shape_errors_are_clear(full_geometry_model):
    model = full_geometry_model.model
    with pytest.raises(ValueError, match="chunks of 8"):
        model.encode_videos(torch.randn(1, 12, 3, 224, 224), torch.randn(1, 12, 3, 224, 224))
    with pytest.raises(ValueError, match="same number of videos and frames"):
        model.encode_videos(torch.randn(1, 16, 3, 224, 224), torch.randn(2, 16, 3, 224, 224))
    with pytest.raises(ValueError, match=r"\(videos, frames, 3, H, W\)"):
        model.encode_videos(torch.randn(16, 3, 224, 224), torch.randn(16, 3, 224, 224))
