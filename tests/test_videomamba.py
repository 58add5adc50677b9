"""VideoMamba encoder: published layout, bidirectional mixer, token layout, dtypes, gradients, weight loading."""

import math
import pickle

import pytest
import torch
import torch.nn.functional as F

from mobilevideogpt.engine import rows_cpu
from mobilevideogpt.model.mamba import Mamba
from mobilevideogpt.model.scan import BACKEND_ENV, selective_scan_ref
from mobilevideogpt.model.videomamba import VideoMamba, VideoMambaConfig
from mobilevideogpt.model.videomamba_weights import WeightLoadError, load_upstream_videomamba

# Upstream `videomamba/videomamba.py` (bimamba mixer of OpenGVLab's mamba fork), per layer N (VideoMamba-M: d_model 576, d_inner 1152, d_state 16, dt_rank 36).
PUBLISHED_LAYER_SHAPES = {
    "mixer.in_proj.weight": (2304, 576),
    "mixer.conv1d.weight": (1152, 1, 4),
    "mixer.conv1d.bias": (1152,),
    "mixer.x_proj.weight": (68, 1152),
    "mixer.dt_proj.weight": (1152, 36),
    "mixer.dt_proj.bias": (1152,),
    "mixer.A_log": (1152, 16),
    "mixer.D": (1152,),
    "mixer.out_proj.weight": (576, 1152),
    "mixer.A_b_log": (1152, 16),
    "mixer.conv1d_b.weight": (1152, 1, 4),
    "mixer.conv1d_b.bias": (1152,),
    "mixer.x_proj_b.weight": (68, 1152),
    "mixer.dt_proj_b.weight": (1152, 36),
    "mixer.dt_proj_b.bias": (1152,),
    "mixer.D_b": (1152,),
    "norm.weight": (576,),
}
PUBLISHED_TOP_SHAPES = {
    "patch_embed.proj.weight": (576, 3, 1, 16, 16),
    "patch_embed.proj.bias": (576,),
    "cls_token": (1, 1, 576),
    "pos_embed": (1, 197, 576),
    "temporal_pos_embedding": (1, 8, 576),
    "norm.weight": (576,),
    "clip_decoder.0.head.weight": (512, 576),
    "clip_decoder.0.head.bias": (512,),
    "clip_decoder.0.norm.weight": (512,),
    "clip_decoder.0.norm.bias": (512,),
}


def published_shapes() -> dict:
    shapes = dict(PUBLISHED_TOP_SHAPES)
    for n in range(32):
        shapes.update({f"layers.{n}.{k}": v for k, v in PUBLISHED_LAYER_SHAPES.items()})
    return shapes


@pytest.fixture(scope="module")
def tiny() -> VideoMamba:
    torch.manual_seed(0)
    return VideoMamba(VideoMambaConfig.tiny()).eval()


def clip(batch=1, frames=8, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, frames, 224, 224, generator=g)


def test_full_size_layout_matches_published_checkpoint():
    with torch.device("meta"):
        model = VideoMamba(VideoMambaConfig())
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes == published_shapes()
    assert sum(p.numel() for p in model.parameters()) == 73_941_504
    with torch.device("meta"):
        uni = VideoMamba(VideoMambaConfig(bimamba=False))
    assert sum(p.numel() for p in uni.parameters()) == 69_259_776
    assert not any("_b" in k for k in uni.state_dict())


def test_tiny_keeps_published_geometry(tiny):
    out = tiny(clip())
    assert out.shape == (1, 1 + 8 * 14 * 14, 32)
    assert tiny.pos_embed.shape[1] == 197 and tiny.temporal_pos_embedding.shape[1] == 8


def test_token_layout_cls_then_frame_major_patches(tiny):
    x = clip(batch=2)
    tokens = tiny.embed(x)
    w, b = tiny.patch_embed.proj.weight, tiny.patch_embed.proj.bias
    for batch, t, row, col in [(0, 0, 0, 0), (1, 3, 5, 9), (0, 7, 13, 13)]:
        patch = x[batch, :, t, row * 16 : (row + 1) * 16, col * 16 : (col + 1) * 16]
        expected = (w[:, :, 0] * patch).sum(dim=(1, 2, 3)) + b
        p = row * 14 + col
        expected = expected + tiny.pos_embed[0, 1 + p] + tiny.temporal_pos_embedding[0, t]
        torch.testing.assert_close(tokens[batch, 1 + t * 196 + p], expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(tokens[:, 0], (tiny.cls_token + tiny.pos_embed[:, 0]).expand(2, 1, -1)[:, 0])


def test_wrong_frame_count_or_size_is_a_clear_error(tiny):
    with pytest.raises(ValueError, match="expects 8 frames"):
        tiny(clip(frames=4))
    with pytest.raises(ValueError, match="patch grid"):
        tiny(torch.randn(1, 3, 8, 112, 112))


def reference_mixer(m: Mamba, x: torch.Tensor) -> torch.Tensor:
    """Independent, literal reading of the bimamba-v2 equations (OpenGVLab/VideoMamba `mamba/mamba_ssm/modules/mamba_simple.py`, bimamba v2)."""
    xz = x @ m.in_proj.weight.T  # (B, L, 2E)
    xs, zs = xz.chunk(2, dim=-1)

    def direction(xs, zs, conv, x_proj, dt_proj, a_log, d):
        width = conv.weight.shape[-1]
        padded = F.pad(xs.transpose(1, 2), (width - 1, 0))
        u = torch.stack(
            [(padded[:, :, t : t + width] * conv.weight[:, 0]).sum(-1) + conv.bias for t in range(xs.shape[1])], dim=2
        )
        u = F.silu(u)  # (B, E, L)
        dbl = u.transpose(1, 2) @ x_proj.weight.T
        rho, bb, cc = dbl.split([m.dt_rank, m.d_state, m.d_state], dim=-1)
        delta = F.softplus(rho @ dt_proj.weight.T + dt_proj.bias).transpose(1, 2)
        y = selective_scan_ref(u, delta, -torch.exp(a_log), bb.transpose(1, 2), cc.transpose(1, 2), D=d)
        return y * F.silu(zs.transpose(1, 2))

    fwd = direction(xs, zs, m.conv1d, m.x_proj, m.dt_proj, m.A_log, m.D)
    bwd = direction(xs.flip(1), zs.flip(1), m.conv1d_b, m.x_proj_b, m.dt_proj_b, m.A_b_log, m.D_b).flip(-1)
    return (fwd + bwd).transpose(1, 2) @ m.out_proj.weight.T


@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_bidirectional_mixer_matches_equations_and_sees_the_future(monkeypatch, backend):
    # Under no_grad, auto runs the compiled CPU conv and scan backwards in time in place of upstream's flips; with
    # a gradient (and under torch) the pure-PyTorch path flips. Both must be the equations.
    monkeypatch.setenv(BACKEND_ENV, backend)
    torch.manual_seed(1)
    m = Mamba(d_model=16, d_state=4, bimamba=True)
    x = torch.randn(2, 12, 16)
    with torch.no_grad():
        expected = reference_mixer(m, x)
        torch.testing.assert_close(m(x), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(m(x), expected, rtol=1e-5, atol=1e-6)
    # Changing the last token changes the first output only with the backward scan.
    x2 = x.clone()
    x2[:, -1] += 10.0
    assert (m(x2)[:, 0] - m(x)[:, 0]).abs().max() > 1e-5
    uni = Mamba(d_model=16, d_state=4, bimamba=False)
    torch.testing.assert_close(uni(x2)[:, :-1], uni(x)[:, :-1])


def test_eval_is_deterministic_train_applies_drop_path():
    torch.manual_seed(0)
    model = VideoMamba(VideoMambaConfig(depth=3, embed_dim=16, drop_path_rate=0.5))
    x = clip(seed=3)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x))
        ref = model(x)
    model.train()
    torch.manual_seed(5)
    with torch.no_grad():
        assert not torch.allclose(model(x), ref)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_forward(tiny, dtype):
    x = clip(seed=4)
    with torch.no_grad():
        ref = tiny(x)
        half = VideoMamba(tiny.config).eval()
        half.load_state_dict(tiny.state_dict())
        out = half.to(dtype)(x)
    assert out.dtype == dtype
    assert torch.isfinite(out.float()).all()
    rel = (out.float() - ref).norm() / ref.norm()
    assert rel < (5e-2 if dtype == torch.bfloat16 else 1e-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_blocks_add_and_norm_in_one_compiled_pass_at_inference(tiny, dtype, rows_kernel, monkeypatch):
    x = clip(seed=5)
    model = VideoMamba(tiny.config).eval()
    model.load_state_dict(tiny.state_dict())
    model.to(dtype)
    passes = []
    kernel = rows_cpu.rms_norm
    monkeypatch.setattr(rows_cpu, "rms_norm", lambda *a, **k: passes.append(a[0].dtype) or kernel(*a, **k))
    with torch.inference_mode():
        fused = model(x.to(dtype))
    assert passes == [dtype] * (tiny.config.depth + 1)  # every block's add + norm and the final one
    model(x.to(dtype)).float().sum().backward()  # with gradients: torch's ops (the compiled pass has no backward)
    assert len(passes) == tiny.config.depth + 1 and model.norm.weight.grad is not None
    monkeypatch.setattr(rows_cpu, "load_kernel", lambda: None)
    with torch.inference_mode():
        stock = model(x.to(dtype))
    assert fused.dtype == stock.dtype == dtype
    rel = float((fused.float() - stock.float()).norm() / stock.float().norm())
    assert rel < (1e-5 if dtype == torch.float32 else 2e-2)  # the mean's summation order; bf16 steps compound


def test_gradients_and_checkpointing_agree():
    torch.manual_seed(0)
    cfg = VideoMambaConfig(depth=2, embed_dim=16, drop_path_rate=0.0)
    model = VideoMamba(cfg).train()
    x = clip(seed=5).requires_grad_(True)
    model(x).square().mean().backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    # Only the unused distillation head gets no gradient.
    assert {k for k, p in model.named_parameters() if p.grad is None} == {
        k for k, _ in model.named_parameters() if k.startswith("clip_decoder")
    }
    x_grad = x.grad.clone()
    model.zero_grad()
    x.grad = None
    model.gradient_checkpointing = True
    model(x).square().mean().backward()
    for k, grad in grads.items():
        torch.testing.assert_close(model.get_parameter(k).grad, grad, rtol=1e-4, atol=1e-7, msg=k)
    torch.testing.assert_close(x.grad, x_grad, rtol=1e-4, atol=1e-8)
    assert grads["layers.0.mixer.A_b_log"].abs().sum() > 0


def upstream_file(tmp_path, state: dict, extra: dict | None = None):
    """An upstream-style multimodal pretraining checkpoint: `model` → vision_encoder.* + other branches."""
    entries = {f"vision_encoder.{k}": v.clone() for k, v in state.items()}
    entries["vision_encoder.pool_norm.weight"] = torch.ones(state["norm.weight"].shape)
    entries["vision_encoder.pool_norm.bias"] = torch.zeros(state["norm.weight"].shape)
    entries["text_encoder.encoder.layer.0.attention.self.query.weight"] = torch.randn(8, 8)
    entries["vision_proj.weight"] = torch.randn(4, 8)
    entries["temp"] = torch.tensor(0.07)
    entries.update(extra or {})
    path = tmp_path / "videomamba_m16_25M_f8_res224.pth"
    torch.save({"model": entries, "epoch": 10}, path)
    return path


def test_upstream_checkpoint_loads_strictly_and_reports_dropped(tiny, tmp_path):
    path = upstream_file(tmp_path, tiny.state_dict())
    fresh = VideoMamba(VideoMambaConfig.tiny()).eval()
    report = load_upstream_videomamba(fresh, path)
    x = clip(seed=6)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), tiny(x))
    assert set(report.dropped) == {
        "vision_encoder.pool_norm.weight",
        "vision_encoder.pool_norm.bias",
        "text_encoder.encoder.layer.0.attention.self.query.weight",
        "vision_proj.weight",
        "temp",
    }
    assert len(report.loaded) == len(tiny.state_dict())
    assert "dropped 2 (pool_norm" in report.summary()


def test_missing_unknown_and_unidirectional_weights_fail_loudly(tiny, tmp_path):
    state = tiny.state_dict()
    missing = {k: v for k, v in state.items() if k != "layers.1.mixer.D"}
    with pytest.raises(WeightLoadError, match="missing 1 keys: layers.1.mixer.D"):
        load_upstream_videomamba(VideoMamba(tiny.config), missing)
    with pytest.raises(WeightLoadError, match="unexpected vision keys 1: head.weight"):
        load_upstream_videomamba(VideoMamba(tiny.config), {**state, "head.weight": torch.zeros(2)})
    uni = {k: v for k, v in state.items() if "_b" not in k}
    with pytest.raises(WeightLoadError, match="without bimamba"):
        load_upstream_videomamba(VideoMamba(tiny.config), uni)
    bad_shape = {**state, "cls_token": torch.zeros(1, 1, 7)}
    with pytest.raises(WeightLoadError, match="shape mismatches: cls_token"):
        load_upstream_videomamba(VideoMamba(tiny.config), bad_shape)
    with pytest.raises(WeightLoadError, match="not found"):
        load_upstream_videomamba(VideoMamba(tiny.config), tmp_path / "nope.pth")


class _NotATensor:
    pass


def test_pickles_with_code_are_refused(tiny, tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"model": {"x": _NotATensor()}}, f, protocol=2)
    with pytest.raises(WeightLoadError, match="tensor-only"):
        load_upstream_videomamba(VideoMamba(tiny.config), path)


def test_position_tables_are_interpolated(tiny, tmp_path):
    state = dict(tiny.state_dict())
    state["temporal_pos_embedding"] = torch.randn(1, 4, 32)
    state["pos_embed"] = torch.randn(1, 1 + 7 * 7, 32)
    fresh = VideoMamba(tiny.config)
    report = load_upstream_videomamba(fresh, upstream_file(tmp_path, state))
    assert set(report.resized) == {"pos_embed", "temporal_pos_embedding"}
    t = fresh.temporal_pos_embedding
    assert t.shape == (1, 8, 32)
    # Linear interpolation with align_corners=False: new row 1 sits at old position 0.25 → 0.75·r0 + 0.25·r1.
    old = state["temporal_pos_embedding"]
    torch.testing.assert_close(t[0, 1], 0.75 * old[0, 0] + 0.25 * old[0, 1])
    torch.testing.assert_close(fresh.pos_embed[0, 0], state["pos_embed"][0, 0])
    assert fresh.pos_embed.shape == (1, 197, 32)


def test_scan_stays_fp32_inside_half_mixer():
    torch.manual_seed(2)
    m = Mamba(d_model=8, d_state=4).to(torch.bfloat16)
    x = torch.randn(1, 10, 8, dtype=torch.bfloat16)
    out = m(x)
    assert out.dtype == torch.bfloat16
    ref = Mamba(d_model=8, d_state=4)
    ref.load_state_dict({k: v.float() for k, v in m.state_dict().items()})
    assert (out.float() - ref(x.float())).abs().max() < 0.05 * max(1.0, ref(x.float()).abs().max().item())
    assert math.isfinite(out.float().sum().item())
