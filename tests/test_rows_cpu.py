"""Compiled row passes (engine/rows_cpu.py): those of int8 prefills and the bf16 / fp32 RMSNorm and quick_gelu,
each against the PyTorch expression it replaces, on awkward shapes and strides, and the int8_matmul entry points with
and without the library."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mobilevideogpt.engine import int8_matmul, rows_cpu

TINY = torch.finfo(torch.float32).tiny


def torch_normalize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    row_max = torch.maximum(x.amax(dim=1, keepdim=True), -x.amin(dim=1, keepdim=True)).clamp_min(TINY)
    return x / row_max, row_max


@pytest.mark.parametrize("rows, k", [(1, 1), (3, 7), (9, 8), (37, 100), (300, 4864)])
def test_normalize_is_torchs_bit_for_bit(rows_kernel, rows, k):
    torch.manual_seed(rows)
    wide = torch.randn(rows, k + 5) * 10
    x = wide[:, 2 : 2 + k]  # a row stride larger than the row
    if rows > 2:
        x[1] = 0.0  # divided by the smallest normal float, not by zero
        x[2] = -x[2].abs()  # the largest magnitude is negative
    out, row_max = rows_cpu.normalize_rows(x)
    ref_out, ref_max = torch_normalize(x)
    assert out.is_contiguous() and row_max.shape == (rows, 1)
    assert torch.equal(row_max, ref_max) and torch.equal(out, ref_out)
    assert float(out.abs().amax(dim=1).max()) <= 1.0


@pytest.mark.parametrize("rows, k", [(1, 3), (5, 8), (33, 250), (64, 4864)])
def test_silu_mul_matches_torch(rows_kernel, rows, k):
    torch.manual_seed(k)
    both = torch.randn(rows, 2 * k) * 6
    both[0, :3] = torch.tensor([-120.0, 95.0, 0.0])[:k]  # silu's exp at both ends of float32's range
    gate, up = both[:, :k], both[:, k:]  # two halves of one matrix, as a merged gate/up product gives them
    ref = F.silu(gate) * up
    out, none = rows_cpu.silu_mul(gate, up, normalize=False)
    assert none is None
    torch.testing.assert_close(out, ref, rtol=2e-6, atol=1e-30)
    normalized, row_max = rows_cpu.silu_mul(gate, up, normalize=True)
    ref_normalized, ref_max = torch_normalize(out)
    assert torch.equal(row_max, ref_max) and torch.equal(normalized, ref_normalized)


@pytest.mark.parametrize("with_bias", [True, False])
def test_scale_rows_rounds_once(rows_kernel, with_bias):
    torch.manual_seed(0)
    y = torch.randn(70, 43)
    row_max = torch.rand(70, 1) * 5
    bias = torch.randn(43) if with_bias else None
    exact = y.double() * row_max.double() + (0.0 if bias is None else bias.double())  # the product is exact in fp64
    expected = exact.float()
    out = rows_cpu.scale_rows_(y.clone(), row_max, bias)
    assert torch.equal(out, expected)


def torch_quick_gelu(v: torch.Tensor) -> torch.Tensor:
    return v * torch.sigmoid(1.702 * v)  # transformers' QuickGELUActivation


@pytest.mark.parametrize("rows, n", [(1, 1), (5, 8), (33, 250), (20, 3072)])
def test_quick_gelu_matches_torch(rows_kernel, rows, n):
    torch.manual_seed(n)
    wide = torch.randn(rows, n + 3) * 8
    wide[0, :3] = torch.tensor([-90.0, 60.0, 0.0])[:n]  # the exponential at both ends of float32's range
    y = wide[:, 1 : 1 + n]  # a row stride larger than the row
    expected = torch_quick_gelu(y)
    out, none = rows_cpu.quick_gelu_(y.clone(), normalize=False)
    assert none is None
    torch.testing.assert_close(out, expected, rtol=2e-6, atol=1e-30)
    out, row_max = rows_cpu.quick_gelu_(y.clone(), normalize=True)
    ref_normalized, ref_max = torch_normalize(torch_quick_gelu(y))
    torch.testing.assert_close(row_max, ref_max, rtol=2e-6, atol=0)
    torch.testing.assert_close(out, ref_normalized, rtol=4e-6, atol=1e-7)
    assert float(out.abs().amax(dim=1).max()) <= 1.0


@pytest.mark.parametrize("with_bias", [True, False])
def test_quick_gelu_after_the_row_scale_is_the_scale_then_the_activation(rows_kernel, with_bias):
    """The scale (+ bias) in front of the activation rounds as `scale_rows_` does: the result is quick_gelu of
    exactly that, in place."""
    torch.manual_seed(1)
    y = torch.randn(40, 96)
    row_max = torch.rand(40, 1) * 3
    bias = torch.randn(96) if with_bias else None
    scaled = rows_cpu.scale_rows_(y.clone(), row_max, bias)
    inplace = y.clone()
    out, out_max = rows_cpu.quick_gelu_(inplace, row_max, bias, normalize=True)
    assert out.data_ptr() == inplace.data_ptr()
    ref_normalized, ref_max = torch_normalize(rows_cpu.quick_gelu_(scaled, normalize=False)[0])
    assert torch.equal(out_max, ref_max) and torch.equal(out, ref_normalized)


def test_inputs_the_kernels_cannot_read_are_refused(rows_kernel):
    with pytest.raises(ValueError, match="unit stride"):
        rows_cpu.normalize_rows(torch.randn(8, 6).t())
    with pytest.raises(ValueError, match="one shape"):
        rows_cpu.silu_mul(torch.randn(4, 8), torch.randn(4, 9), normalize=True)
    with pytest.raises(ValueError, match="bias"):
        rows_cpu.scale_rows_(torch.randn(4, 8), torch.ones(4, 1), torch.ones(7))
    with pytest.raises(ValueError, match="row_max"):
        rows_cpu.quick_gelu_(torch.randn(4, 8), torch.ones(3, 1))
    with pytest.raises(ValueError, match="only together with a row scale"):
        rows_cpu.quick_gelu_(torch.randn(4, 8), None, torch.ones(8))
    assert not rows_cpu.takes(torch.randn(4, 8, dtype=torch.bfloat16))


@pytest.mark.skipif(int8_matmul.problem() is not None, reason=f"no fbgemm here: {int8_matmul.problem()}")
def test_int8_products_are_the_same_without_the_library(rows_kernel, monkeypatch):
    torch.manual_seed(0)
    layer = torch.nn.Linear(96, 40)
    quantized = int8_matmul.Int8Linear.from_linear(layer)
    x = torch.randn(2, 30, 96)
    gate, up = torch.randn(30, 64), torch.randn(30, 64)
    compiled = quantized(x), int8_matmul.silu_mul_normalized(gate, up)
    monkeypatch.setattr(rows_cpu, "load_kernel", lambda: None)
    plain = quantized(x), int8_matmul.silu_mul_normalized(gate, up)
    torch.testing.assert_close(compiled[0], plain[0], rtol=1e-6, atol=1e-6)  # the bias: one rounding or two
    torch.testing.assert_close(compiled[1][0], plain[1][0], rtol=2e-6, atol=1e-7)
    torch.testing.assert_close(compiled[1][1], plain[1][1], rtol=2e-6, atol=0)


def torch_rms_norm(x, weight, eps, residual=None):
    """VideoMamba's RMSNorm of the residual stream (videomamba.RMSNorm before its cast), in fp32."""
    v = x.float() if residual is None else residual + x
    return v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + eps) * weight.float(), v


@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows, d", [(1, 5), (7, 8), (40, 579)])
def test_rms_norm_of_the_residual_sum_matches_torch(rows_kernel, x_dtype, out_dtype, rows, d):
    torch.manual_seed(rows * d)
    wide = (torch.randn(rows, d + 3) * 4).to(x_dtype)
    x = wide[:, 1 : 1 + d]  # a row stride larger than the row
    weight = torch.randn(d).to(torch.bfloat16)
    residual = torch.randn(rows, d) * 2
    for given in (None, residual):
        out, total = rows_cpu.rms_norm(x, weight, 1e-5, given, out_dtype, keep_sum=True)
        ref, ref_total = torch_rms_norm(x, weight, 1e-5, given)
        assert out.dtype == out_dtype and out.shape == x.shape and out.is_contiguous()
        assert torch.equal(total, ref_total)  # the residual stream is the exact fp32 sum
        if out_dtype == torch.float32:  # only the mean's order of summation differs
            torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
        else:  # rounded once from fp32: at most one bf16 step (two where that order moves a tie)
            assert float(((out.float() - ref) / ref.abs().clamp_min(1e-3)).abs().max()) <= 2**-7
        assert rows_cpu.rms_norm(x, weight, 1e-5, given, out_dtype)[1] is None


def test_rms_norm_rows_of_zeros_and_a_nan(rows_kernel):
    x = torch.zeros(3, 16)
    x[2, 4] = float("nan")
    out, _ = rows_cpu.rms_norm(x, torch.ones(16), 1e-6, out_dtype=torch.bfloat16)
    assert torch.equal(out[:2].float(), torch.zeros(2, 16))  # 0 · 1/sqrt(eps), not NaN
    assert out[2].float().isnan().all()  # a NaN poisons its row, as torch's mean does


@pytest.mark.parametrize("rows, n", [(1, 3), (5, 16), (33, 250), (64, 3072)])
def test_quick_gelu_bf16_rounds_once(rows_kernel, rows, n):
    torch.manual_seed(n)
    wide = (torch.randn(rows, n + 4) * 5).to(torch.bfloat16)
    wide[0, :3] = torch.tensor([-120.0, 95.0, 0.0])[:n]
    y = wide[:, 2 : 2 + n]
    outside = torch.cat([wide[:, :2], wide[:, 2 + n :]], dim=1).clone()
    v = y.float()
    once = (v * torch.sigmoid(1.702 * v)).to(torch.bfloat16)
    stock = y * torch.sigmoid(1.702 * y)  # transformers' three bf16 ops
    out = rows_cpu.quick_gelu_bf16_(y)
    assert out.data_ptr() == y.data_ptr()  # in place
    steps = (out.float() - once.float()).abs() / once.float().abs().clamp_min(1e-30)
    assert float(steps.max()) <= 2**-7 and float(((out != once) & (once.abs() > 1e-30)).float().mean()) < 1e-3  # nearly all exactly once
    assert float((out.float() - stock.float()).abs().max()) <= 2**-6 * float(stock.float().abs().max())
    assert torch.equal(torch.cat([wide[:, :2], wide[:, 2 + n :]], dim=1), outside)  # outside the view untouched


@pytest.mark.parametrize("rows, k", [(1, 3), (5, 16), (33, 250), (64, 4864)])
def test_silu_mul_bf16_rounds_once_in_place(rows_kernel, rows, k):
    torch.manual_seed(k)
    both = (torch.randn(rows, 2 * k) * 6).to(torch.bfloat16)
    both[0, :3] = torch.tensor([-120.0, 95.0, 0.0])[:k]
    gate, up = both[:, :k], both[:, k:]  # the two halves of one matrix
    once = (F.silu(gate.float()) * up.float()).to(torch.bfloat16)
    stock = F.silu(gate) * up  # torch's two bf16 ops
    kept = up.clone()
    out = rows_cpu.silu_mul_bf16_(gate, up)
    assert out.data_ptr() == both.data_ptr() and torch.equal(up, kept)  # into gate, up untouched
    steps = (out.float() - once.float()).abs() / once.float().abs().clamp_min(1e-30)
    assert float(steps.max()) <= 2**-7 and float(((out != once) & (once.abs() > 1e-30)).float().mean()) < 1e-3
    assert float((out.float() - stock.float()).abs().max()) <= 2**-6 * float(stock.float().abs().max())


def test_row_passes_refuse_what_they_cannot_read(rows_kernel):
    with pytest.raises(ValueError, match="fp32 or bf16"):
        rows_cpu.rms_norm(torch.randn(4, 8).half(), torch.ones(8), 1e-5)
    with pytest.raises(ValueError, match="fp32 or bf16"):
        rows_cpu.rms_norm(torch.randn(8, 4).t(), torch.ones(8), 1e-5)  # columns, not rows
    with pytest.raises(ValueError, match="residual"):
        rows_cpu.rms_norm(torch.randn(4, 8), torch.ones(8), 1e-5, residual=torch.randn(4, 8).bfloat16())
    with pytest.raises(ValueError, match="weight"):
        rows_cpu.rms_norm(torch.randn(4, 8), torch.ones(7), 1e-5)
    with pytest.raises(ValueError, match="bf16"):
        rows_cpu.quick_gelu_bf16_(torch.randn(4, 8))
    with pytest.raises(ValueError, match="bf16"):
        rows_cpu.silu_mul_bf16_(torch.randn(4, 8).bfloat16(), torch.randn(4, 8))
    with pytest.raises(ValueError, match="one shape"):
        rows_cpu.silu_mul_bf16_(torch.randn(4, 8).bfloat16(), torch.randn(4, 9).bfloat16())
