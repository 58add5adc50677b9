"""CLIP's layers for CPU inference (engine/clip_cpu.py): the merged q/k/v attention and the MLP with its quick_gelu
compiled give the stock layers' numbers at fp32 and under int8 x int8, run the stock forward wherever they do not
apply, and are installed by the inference placement."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
from transformers import CLIPVisionConfig
from transformers.models.clip.modeling_clip import CLIPMLP, CLIPAttention

from mobilevideogpt.engine import int8_matmul, rows_cpu
from mobilevideogpt.engine.clip_cpu import MergedQKVAttention, QuickGeluMLP, fuse_clip_layers
from mobilevideogpt.model.assemble import place_for_inference
from mobilevideogpt.model.tiny import build_tiny_model
from mobilevideogpt.runtime import plan_inference

needs_fbgemm = pytest.mark.skipif(int8_matmul.problem() is not None, reason=f"no fbgemm: {int8_matmul.problem()}")


def stock_mlp(hidden: int = 48, intermediate: int = 200, act: str = "quick_gelu", seed: int = 0) -> CLIPMLP:
    torch.manual_seed(seed)
    mlp = CLIPMLP(CLIPVisionConfig(hidden_size=hidden, intermediate_size=intermediate, hidden_act=act)).eval()
    with torch.no_grad():
        for layer in (mlp.fc1, mlp.fc2):
            layer.bias.normal_()  # a bias that matters
    return mlp


def fused_copy(module: nn.Module, kind: type = QuickGeluMLP) -> nn.Module:
    """A copy of `module` as `fuse_clip_layers` leaves it: a `kind` in its place."""
    holder = nn.Module()
    holder.child = copy.deepcopy(module)
    assert fuse_clip_layers(holder) == 1
    assert isinstance(holder.child, kind)
    return holder.child


def test_fp32_matches_the_stock_mlp(rows_kernel):
    mlp = stock_mlp()
    x = torch.randn(3, 17, 48) * 2
    with torch.inference_mode():
        torch.testing.assert_close(fused_copy(mlp)(x), mlp(x), rtol=2e-6, atol=2e-6)


@needs_fbgemm
def test_int8_matches_the_stock_int8_layers(rows_kernel):
    """Under w8a8 the fused pass scales fc1's product, adds its bias, applies quick_gelu and normalises fc2's input:
    the unfused Int8Linear layers' numbers, and not the fp32 MLP's."""
    mlp = stock_mlp(intermediate=256)
    quantized = copy.deepcopy(mlp)
    assert int8_matmul.int8_linears(quantized) == 2
    module = fused_copy(mlp)
    assert int8_matmul.int8_linears(module) == 2 and module.int8  # the placement's order: fuse, then quantize
    x = torch.randn(2, 50, 48)
    with torch.inference_mode():
        reference, exact, out = quantized(x), mlp(x), module(x)
    scale = float(reference.abs().max())
    torch.testing.assert_close(out, reference, rtol=0, atol=1e-3 * scale)  # exp's last bit may move one int8 step
    assert float((out - reference).abs().max()) < 0.1 * float((reference - exact).abs().max())


def test_bf16_layers_run_quick_gelu_compiled_rounding_once(rows_kernel, monkeypatch):
    mlp = stock_mlp().to(torch.bfloat16)
    module = fused_copy(mlp)
    x = torch.randn(2, 9, 48).to(torch.bfloat16)
    passes = []
    compiled = rows_cpu.quick_gelu_bf16_
    monkeypatch.setattr(rows_cpu, "quick_gelu_bf16_", lambda y: passes.append(y.shape) or compiled(y))
    with torch.inference_mode():
        out, stock = module(x), mlp(x)
        hidden = mlp.fc1(x).float()
        once = mlp.fc2((hidden * torch.sigmoid(1.702 * hidden)).to(torch.bfloat16))  # quick_gelu rounded once
    assert passes == [(18, 200)] and out.shape == stock.shape
    # As rounding once: an activation may land one bf16 step away (exp's last bit), nothing more.
    assert float((out.float() - once.float()).abs().max()) <= 2**-7 * float(once.abs().max())
    torch.testing.assert_close(out, stock, rtol=0, atol=4e-2 * float(stock.abs().max()))  # bf16 steps of fc2's input


def test_the_stock_expression_runs_with_gradients_other_dtypes_and_no_library(rows_kernel, monkeypatch):
    mlp = stock_mlp()
    module = fused_copy(mlp)
    x = torch.randn(2, 9, 48, requires_grad=True)
    out = module(x)
    out.sum().backward()  # the compiled pass has no backward: training runs the stock one
    torch.testing.assert_close(out, mlp(x), rtol=0, atol=0)
    assert x.grad is not None and module.fc1.weight.grad is not None

    half = fused_copy(mlp.to(torch.float16))
    with torch.inference_mode():
        xh = x.detach().to(torch.float16)
        assert torch.equal(half(xh), mlp(xh))

    calls = []
    monkeypatch.setattr(rows_cpu, "quick_gelu_", lambda *a, **k: calls.append(a))
    monkeypatch.setattr(rows_cpu, "load_kernel", lambda: None)
    mlp32 = stock_mlp()
    with torch.inference_mode():
        assert torch.equal(fused_copy(mlp32)(x.detach()), mlp32(x.detach()))
    assert not calls


def test_only_quick_gelu_mlps_are_replaced_and_their_keys_stay():
    holder = nn.Module()
    holder.quick, holder.exact = stock_mlp(), stock_mlp(act="gelu")
    keys = list(holder.state_dict())
    assert fuse_clip_layers(holder) == 1
    assert isinstance(holder.quick, QuickGeluMLP) and isinstance(holder.exact, CLIPMLP)
    assert list(holder.state_dict()) == keys
    assert fuse_clip_layers(holder) == 0  # already fused


def stock_attention(seed: int = 0) -> CLIPAttention:
    torch.manual_seed(seed)
    config = CLIPVisionConfig(hidden_size=64, num_attention_heads=4)
    config._attn_implementation = "sdpa"
    attention = CLIPAttention(config).eval()
    with torch.no_grad():
        for name in ("q_proj", "k_proj", "v_proj"):
            getattr(attention, name).bias.normal_()
    return attention


def test_merged_qkv_matches_the_stock_attention_and_shares_its_weights():
    attention = stock_attention()
    module = fused_copy(attention, MergedQKVAttention)
    assert module.q_proj.weight.data_ptr() == module.qkv.weight.data_ptr()  # views: no second copy
    assert module.v_proj.bias.data_ptr() == module.qkv.bias[2 * 64 :].data_ptr()
    x = torch.randn(3, 20, 64)
    with torch.inference_mode():
        out, _ = module(x)
        torch.testing.assert_close(out, attention(x)[0], rtol=1e-5, atol=1e-6)
        q = module.q_proj(x)  # what reads the projections on their own still can
        torch.testing.assert_close(q, attention.q_proj(x), rtol=0, atol=0)
    grad_x = x.clone().requires_grad_()
    module(grad_x)[0].sum().backward()  # with gradients: the stock forward, into the projections' own weights
    assert module.q_proj.weight.grad is not None and module.qkv.weight.grad is None


@needs_fbgemm
def test_merged_qkv_under_int8_is_the_three_int8_projections(rows_kernel):
    attention = stock_attention(seed=1)
    quantized = copy.deepcopy(attention)
    int8_matmul.int8_linears(quantized)
    module = fused_copy(attention, MergedQKVAttention)
    assert int8_matmul.int8_linears(module) == 5  # q, k, v, out and the merged one
    x = torch.randn(2, 30, 64)
    with torch.inference_mode():
        torch.testing.assert_close(module(x)[0], quantized(x)[0], rtol=1e-5, atol=1e-6)


def test_inference_placement_fuses_every_clip_layer_and_keeps_the_features(rows_kernel):
    model = build_tiny_model(seed=0).eval()
    frames = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        before = model.model.clip_frame_features(frames)
    place_for_inference(model, plan_inference("cpu", "fp32"))
    layers = model.model.image_vision_tower.vision_tower.vision_model.encoder.layers
    assert len(layers) > 0 and all(isinstance(layer.mlp, QuickGeluMLP) for layer in layers)
    assert all(isinstance(layer.self_attn, MergedQKVAttention) for layer in layers)
    with torch.inference_mode():
        torch.testing.assert_close(model.model.clip_frame_features(frames), before, rtol=1e-5, atol=1e-5)
