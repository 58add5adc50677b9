"""int8 x int8 linear layers (engine/int8_matmul.py): error bounds against fp32, per-token activation ranges, the
LLM's prefill path and the towers' replacement."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from mobilevideogpt.engine import int8_matmul, lowp

pytestmark = pytest.mark.skipif(int8_matmul.problem() is not None, reason=f"no fbgemm here: {int8_matmul.problem()}")


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out - ref).detach().norm() / ref.detach().norm())


def test_int8_linear_is_close_to_fp32_on_any_input_shape():
    torch.manual_seed(0)
    layer = nn.Linear(96, 80)
    quantized = int8_matmul.Int8Linear.from_linear(layer)
    for shape in [(1, 96), (7, 96), (2, 33, 96)]:
        x = torch.randn(shape)
        out, ref = quantized(x), layer(x)
        assert out.shape == ref.shape and out.dtype == torch.float32
        # One 7-bit rounding of each activation (step 1/63 of its row's largest magnitude) and one 8-bit rounding of
        # each weight: measured 0.016 at (3, 50, 896) x (896, 4864); allowed about twice that here.
        assert relative_error(out, ref) < 0.04
    assert quantized(torch.randn(4, 96, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_activations_are_quantized_per_token():
    """A token 1000x larger than the others (an attention sink) leaves the others' precision alone."""
    torch.manual_seed(0)
    layer = nn.Linear(64, 64, bias=False)
    quantized = int8_matmul.Int8Linear.from_linear(layer)
    x = torch.randn(16, 64)
    x[3] *= 1000.0
    out, ref = quantized(x), layer(x)
    others = [i for i in range(16) if i != 3]
    assert relative_error(out[others], ref[others]) < 0.04
    assert relative_error(out[3:4], ref[3:4]) < 0.04
    zeros = quantized(torch.zeros(2, 64))  # an all-zero row is no division by zero
    assert torch.equal(zeros, torch.zeros(2, 64))


def test_prefill_rows_use_int8_products_and_decode_rows_the_kernel(linear_kernel):
    torch.manual_seed(0)
    layer = nn.Linear(128, 96)
    packed = lowp.LowPrecisionLinear.from_linear(layer, "int8", torch.float32, int8_prefill=True)
    widened = lowp.LowPrecisionLinear.from_linear(layer, "int8", torch.float32)
    assert "matmul=int8" in repr(packed) and "matmul=float32" in repr(widened)
    decode = torch.randn(1, 128)
    assert torch.equal(packed(decode), widened(decode))  # few rows: the same kernel on the same int8 weights
    prefill = torch.randn(1, 40, 128)
    out, ref = packed(prefill), layer(prefill)
    assert not torch.equal(out, widened(prefill))  # the activations were rounded too
    assert relative_error(out, ref) < 0.04
    with pytest.raises(ValueError, match="need int8 weights"):
        lowp.LowPrecisionLinear.from_linear(layer, "bf16", torch.float32, int8_prefill=True)


def test_towers_get_int8_linears_except_the_ones_read_directly():
    from mobilevideogpt.model.mamba import WEIGHTS_READ_DIRECTLY, Mamba

    torch.manual_seed(0)
    mixer = Mamba(32).eval()
    x = torch.randn(1, 20, 32)
    with torch.inference_mode():
        ref = mixer(x)
    assert int8_matmul.int8_linears(mixer, WEIGHTS_READ_DIRECTLY) == 2  # in_proj and out_proj
    assert isinstance(mixer.in_proj, int8_matmul.Int8Linear) and isinstance(mixer.x_proj_b, nn.Linear)
    with torch.inference_mode():
        assert relative_error(mixer(x), ref) < 0.05
