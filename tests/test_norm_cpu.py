"""The language model's RMSNorms at CPU inference (engine/norm_cpu.py): the stock numbers in one compiled pass, the
stock forward wherever that pass does not apply, and the placement installs them."""

from __future__ import annotations

import torch
from transformers.models.qwen2.modeling_qwen2 import Qwen2RMSNorm

from mobilevideogpt.engine import rows_cpu
from mobilevideogpt.engine.norm_cpu import CompiledRMSNorm, compile_rms_norms
from mobilevideogpt.model.assemble import place_for_inference
from mobilevideogpt.model.tiny import build_tiny_model
from mobilevideogpt.runtime import plan_inference


def norms(seed: int = 0, width: int = 40) -> tuple[Qwen2RMSNorm, CompiledRMSNorm]:
    torch.manual_seed(seed)
    stock = Qwen2RMSNorm(width, eps=1e-6)
    with torch.no_grad():
        stock.weight.normal_()
    holder = torch.nn.Module()
    holder.norm = Qwen2RMSNorm(width, eps=1e-6)
    holder.norm.load_state_dict(stock.state_dict())
    assert compile_rms_norms(holder) == 1 and compile_rms_norms(holder) == 0
    return stock, holder.norm


def test_inference_matches_the_stock_norm_in_one_pass(rows_kernel, monkeypatch):
    stock, compiled = norms()
    x = torch.randn(2, 33, 40) * 3
    passes = []
    kernel = rows_cpu.rms_norm
    monkeypatch.setattr(rows_cpu, "rms_norm", lambda *a, **k: passes.append(a[0].shape) or kernel(*a, **k))
    with torch.inference_mode():
        out, ref = compiled(x), stock(x)
        one = compiled(x[:, -1:])  # a decode step's row
    assert passes == [(2, 33, 40), (2, 1, 40)]
    assert out.dtype == torch.float32 and out.shape == x.shape
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)  # the mean's order of summation
    torch.testing.assert_close(one, ref[:, -1:], rtol=1e-6, atol=1e-6)
    assert isinstance(compiled, Qwen2RMSNorm) and list(compiled.state_dict()) == ["weight"]


def test_gradients_other_dtypes_and_no_library_run_the_stock_forward(rows_kernel, monkeypatch):
    stock, compiled = norms(1)
    x = torch.randn(3, 40, requires_grad=True)
    out = compiled(x)
    out.sum().backward()
    assert torch.equal(out, stock(x)) and x.grad is not None and compiled.weight.grad is not None
    with torch.inference_mode():
        xb = x.detach().bfloat16()
        assert torch.equal(compiled(xb), stock(xb))  # bf16 input: the stock rounding
        monkeypatch.setattr(rows_cpu, "load_kernel", lambda: None)
        assert torch.equal(compiled(x.detach()), stock(x.detach()))


def test_inference_placement_compiles_every_language_model_norm(rows_kernel):
    model = build_tiny_model(seed=0).eval()
    ids = torch.randint(0, 1000, (1, 12))
    with torch.inference_mode():
        before = model(input_ids=ids).logits
    place_for_inference(model, plan_inference("cpu", "fp32"))
    found = [m for m in model.model.modules() if isinstance(m, Qwen2RMSNorm)]
    assert len(found) == 2 * model.config.num_hidden_layers + 1
    assert all(isinstance(m, CompiledRMSNorm) for m in found)
    with torch.inference_mode():
        torch.testing.assert_close(model(input_ids=ids).logits, before, rtol=1e-4, atol=1e-4)
