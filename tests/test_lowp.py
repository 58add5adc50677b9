"""LLM weights packed in bf16 / int8: the layers compute what their stored weights say, on every row count."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mobilevideogpt.engine import int8_matmul, linear_cpu
from mobilevideogpt.engine.lowp import (
    KERNEL_ROWS,
    PrefillMLP,
    LowPrecisionEmbedding,
    LowPrecisionLinear,
    pack_language_model,
    quantize_rows,
    is_gated_silu_mlp,
    widen,
)
from mobilevideogpt.model.tiny import build_tiny_model


def test_int8_rows_are_within_half_a_step():
    w = torch.randn(50, 33)
    w[7] = 0.0  # an all-zero row has scale 0 and stays zero
    q, scale = quantize_rows(w)
    assert q.dtype == torch.int8 and scale.shape == (50,) and int(q.abs().max()) <= 127
    error = (q.float() * scale[:, None] - w).abs()
    assert bool((error <= scale[:, None] / 2 + 1e-7).all())
    assert scale[7] == 0 and not q[7].any()
    assert torch.equal(quantize_rows(w)[0], q)  # deterministic, and independent of the block size used inside


@pytest.mark.parametrize("fmt", ["bf16", "int8"])
@pytest.mark.parametrize("rows", [1, 3, KERNEL_ROWS, KERNEL_ROWS + 5])  # the kernel, its most rows, torch matmul
def test_linear_matches_its_widened_weight(linear_kernel, fmt, rows):
    linear = torch.nn.Linear(96, 40)
    packed = LowPrecisionLinear.from_linear(linear, fmt, torch.float32)
    x = torch.randn(1, rows, 96)
    expected = F.linear(x.double(), widen(packed.weight, packed.scale, torch.float64), linear.bias.double())
    out = packed(x)
    assert out.shape == (1, rows, 40) and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)


def test_without_the_kernel_layers_widen(monkeypatch):
    monkeypatch.setattr(linear_cpu, "load_kernel", lambda: None)
    linear = torch.nn.Linear(16, 8)
    packed = LowPrecisionLinear.from_linear(linear, "int8", torch.float32)
    x = torch.randn(1, 16)
    expected = F.linear(x, widen(packed.weight, packed.scale, torch.float32), linear.bias)
    torch.testing.assert_close(packed(x), expected)


def test_packing_the_tiny_model(linear_kernel):
    model = build_tiny_model(seed=0)
    reference = {name: p.detach().clone() for name, p in model.named_parameters()}
    pack_language_model(model, "bf16")
    inner = model.model
    assert isinstance(inner.embed_tokens, LowPrecisionEmbedding) and isinstance(model.lm_head, LowPrecisionLinear)
    assert model.lm_head.weight.data_ptr() == inner.embed_tokens.weight.data_ptr()  # tied: one stored copy
    layer = inner.layers[0]
    for name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.down_proj"):
        module = layer.get_submodule(name)
        assert isinstance(module, LowPrecisionLinear)
        assert torch.equal(module.weight, reference[f"model.layers.0.{name}.weight"].bfloat16())
    assert torch.equal(layer.self_attn.q_proj.bias, reference["model.layers.0.self_attn.q_proj.bias"])
    # The towers, projectors and norms are untouched; hidden states stay fp32.
    assert not any(isinstance(m, LowPrecisionLinear) for m in inner.image_vision_tower.modules())
    assert inner.hidden_dtype == torch.float32
    ids = torch.tensor([[151644, 872, 198, 2082]])
    expected = F.embedding(ids, reference["model.embed_tokens.weight"].bfloat16()).float()
    assert torch.equal(inner.embed_tokens(ids), expected)


def test_bf16_weights_are_packed_without_a_copy(linear_kernel):
    model = build_tiny_model(seed=0).to(torch.bfloat16)
    before = model.model.layers[0].mlp.up_proj.weight.data_ptr()
    embedding = model.model.embed_tokens.weight.data_ptr()
    pack_language_model(model, "bf16")
    assert model.model.layers[0].mlp.up_proj.weight.data_ptr() == before
    assert model.model.embed_tokens.weight.data_ptr() == embedding


def test_int8_embedding_rows_are_dequantized():
    weight = torch.randn(20, 8)
    q, scale = quantize_rows(weight)
    embedding = LowPrecisionEmbedding(q, scale)
    ids = torch.tensor([[3, 19, 3]])
    torch.testing.assert_close(embedding(ids), (q.float() * scale[:, None])[ids])


def _mlp_and_layers(fmt: str, int8_prefill: bool):
    from transformers import Qwen2Config
    from transformers.models.qwen2.modeling_qwen2 import Qwen2MLP

    torch.manual_seed(0)
    mlp = Qwen2MLP(Qwen2Config(hidden_size=48, intermediate_size=136, hidden_act="silu"))
    layers = [LowPrecisionLinear.from_linear(m, fmt, torch.float32, int8_prefill) for m in (mlp.gate_proj, mlp.up_proj, mlp.down_proj)]
    return mlp, layers


@pytest.mark.parametrize(
    "fmt, int8_prefill",
    [("bf16", False), ("int8", False), pytest.param("int8", True, marks=pytest.mark.skipif(
        int8_matmul.problem() is not None, reason=f"no fbgemm here: {int8_matmul.problem()}"))],
)  # fmt: skip
def test_prefill_mlp_computes_the_unfused_layers(linear_kernel, fmt, int8_prefill):
    """silu(gate) * up fused (and with int8 prefills gate and up as one product, silu fused with down's input
    normalisation): the numbers of the three projections called one by one, on prefill and decode row counts."""
    mlp, (gate, up, down) = _mlp_and_layers(fmt, int8_prefill)
    x = torch.randn(1, 45, 48)
    with torch.inference_mode():
        expected = down(F.silu(gate(x)) * up(x))
        decode_expected = down(F.silu(gate(x[:, :2])) * up(x[:, :2]))
        assert is_gated_silu_mlp(mlp)
        fused = PrefillMLP(gate, up, down)
        assert (fused.gate_up is not None) == int8_prefill
        assert (gate.packed is None and up.packed is None) if int8_prefill else gate.packed is None
        out = fused(x)
        assert out.shape == x.shape and out.dtype == torch.float32
        torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-6)
        assert torch.equal(fused(x[:, :2]), decode_expected)  # decode rows: the kernel path, unchanged


def test_a_bf16_prefill_mlp_stays_in_bf16_from_gate_and_up_to_down():
    """Products in bf16 (CPUs with bf16 matrix units): the numbers of the MLP computed in bf16 as a bf16 model does,
    and no fp32 copy of gate's, up's or their product's (rows x intermediate) matrices (they cost more than the
    products)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    torch.manual_seed(0)
    mlp, _ = _mlp_and_layers("bf16", False)
    gate, up, down = (
        LowPrecisionLinear.from_linear(m, "bf16", torch.bfloat16) for m in (mlp.gate_proj, mlp.up_proj, mlp.down_proj)
    )
    fused = PrefillMLP(gate, up, down)
    x = torch.randn(1, 45, 48)
    wide = []

    class Outputs(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if isinstance(out, torch.Tensor) and out.shape[-1] == 136:
                wide.append(out.dtype)
            return out

    with torch.inference_mode():
        xb = x.bfloat16()
        g, u = F.linear(xb, gate.weight).float(), F.linear(xb, up.weight).float()
        once = F.linear((F.silu(g) * u).bfloat16(), down.weight).float()  # silu(gate) * up rounded once
        with Outputs():
            out = fused(x)
    assert out.dtype == torch.float32 and out.shape == x.shape
    # An activation may land one bf16 step from rounding once (exp's last bit): a few of down's input steps.
    torch.testing.assert_close(out, once, rtol=0, atol=2**-7 * float(once.abs().max()))
    assert wide and set(wide) == {torch.bfloat16}


@pytest.mark.skipif(int8_matmul.problem() is not None, reason=f"no fbgemm here: {int8_matmul.problem()}")
def test_packing_puts_every_mlp_in_one_module(linear_kernel):
    w8a8 = pack_language_model(build_tiny_model(seed=0), "int8", int8_prefill=True)
    assert all(isinstance(layer.mlp, PrefillMLP) and layer.mlp.gate_up is not None for layer in w8a8.model.layers)
    plain = pack_language_model(build_tiny_model(seed=0), "bf16")
    assert all(isinstance(layer.mlp, PrefillMLP) and layer.mlp.gate_up is None for layer in plain.model.layers)
