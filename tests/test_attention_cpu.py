"""Compiled causal attention for CPU prefills (engine/attention_cpu.py): against torch's SDPA on awkward shapes, and
the language model's attention function choosing it only where it applies."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mobilevideogpt.engine import attention_cpu, decoding


def reference(query, key, value, scale):
    groups = query.shape[1] // key.shape[1]
    out = F.scaled_dot_product_attention(
        query.double(), key.double().repeat_interleave(groups, 1), value.double().repeat_interleave(groups, 1),
        is_causal=True, scale=scale,
    )  # fmt: skip
    return out.transpose(1, 2).float()


# (batch, query heads, key/value heads, positions, head_dim): Qwen2.5-0.5B's grouping at a few lengths around the
# kernel's 16-position blocks and 64-key tiles, one position, head_dims that are not a multiple of 16, no grouping
@pytest.mark.parametrize(
    "shape", [(1, 14, 2, 1, 64), (1, 14, 2, 17, 64), (1, 14, 2, 130, 64), (2, 4, 4, 70, 32), (1, 6, 3, 9, 24), (1, 2, 1, 65, 72)]
)
def test_matches_sdpa(attention_kernel, shape):
    batch, heads, kv_heads, positions, dim = shape
    torch.manual_seed(positions)
    query = torch.randn(batch, heads, positions, dim) * 3  # sharp softmaxes as well as flat ones
    key = torch.randn(batch, kv_heads, positions, dim)
    value = torch.randn(batch, kv_heads, positions, dim)
    out = attention_cpu.causal_attention(query, key, value, dim**-0.5)
    assert out.shape == (batch, positions, heads, dim) and out.is_contiguous()
    torch.testing.assert_close(out, reference(query, key, value, dim**-0.5), rtol=2e-5, atol=2e-5)


def test_reads_strided_views_in_place(attention_kernel):
    """The layouts a prefill hands over: queries transposed out of the projection's (B, T, H, D) output, keys and
    values as views of a cache buffer with room past the prompt."""
    torch.manual_seed(0)
    query = torch.randn(1, 40, 14, 64).transpose(1, 2)
    buffer = torch.randn(2, 1, 2, 96, 64)
    key, value = buffer[0, :, :, :40], buffer[1, :, :, :40]
    out = attention_cpu.causal_attention(query, key, value, 0.125)
    torch.testing.assert_close(out, reference(query, key, value, 0.125), rtol=2e-5, atol=2e-5)


def test_a_large_score_leaves_no_overflow(attention_kernel):
    query = torch.zeros(1, 1, 70, 8)
    key = torch.zeros(1, 1, 70, 8)
    query[..., 0], key[..., 0] = 100.0, 100.0  # scores of 10 000: a softmax without its running maximum overflows
    value = torch.randn(1, 1, 70, 8)
    out = attention_cpu.causal_attention(query, key, value, 1.0)
    torch.testing.assert_close(out, reference(query, key, value, 1.0), rtol=1e-5, atol=1e-5)


def test_refuses_what_it_does_not_compute(attention_kernel):
    query, key = torch.randn(1, 4, 10, 8), torch.randn(1, 2, 10, 8)
    assert attention_cpu.takes(query, key, key)
    assert not attention_cpu.takes(query, torch.randn(1, 2, 12, 8), torch.randn(1, 2, 12, 8))  # a cached prefix
    assert not attention_cpu.takes(torch.randn(1, 3, 10, 8), key, key)  # heads not in whole groups
    assert not attention_cpu.takes(query.bfloat16(), key.bfloat16(), key.bfloat16())
    with pytest.raises(ValueError, match="fp32 CPU"):
        attention_cpu.causal_attention(query, key.transpose(2, 3), key, 1.0)


class _Module:
    is_causal = True
    num_key_value_groups = 2


@pytest.mark.parametrize("fastest", [True, False])
def test_the_attention_function_uses_the_kernel_only_for_an_unmasked_prompt_without_gradient(attention_kernel, fastest):
    torch.manual_seed(0)
    query, key, value = torch.randn(1, 4, 12, 16), torch.randn(1, 2, 12, 16), torch.randn(1, 2, 12, 16)
    expected = reference(query, key, value, 0.25)
    calls = []
    real = attention_cpu.causal_attention

    def counting(*args):
        calls.append(args[0].shape)
        return real(*args)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(attention_cpu, "causal_attention", counting)
        patch.setattr(decoding, "compiled_attention_fastest", lambda: fastest)  # AVX2 or not
        with torch.no_grad():
            out, _ = decoding.packed_sdpa_attention(_Module(), query, key, value, None, scaling=0.25)
            torch.testing.assert_close(out, expected, rtol=2e-5, atol=2e-5)
            assert len(calls) == int(fastest)  # elsewhere torch's SDPA, the same numbers
            mask = torch.ones(1, 1, 12, 12, dtype=torch.bool).tril()
            masked, _ = decoding.packed_sdpa_attention(_Module(), query, key, value, mask, scaling=0.25)
            torch.testing.assert_close(masked, expected, rtol=2e-5, atol=2e-5)
        grad, _ = decoding.packed_sdpa_attention(_Module(), query.requires_grad_(), key, value, None, scaling=0.25)
        assert grad.requires_grad
        assert len(calls) == int(fastest)  # a mask or a gradient: torch's SDPA


def test_the_kernel_is_chosen_where_torch_runs_avx2():
    features = decoding.cpu_features()
    assert decoding.compiled_attention_fastest() == (features.isa == "AVX2")


def test_a_bf16_prefill_attends_in_bf16_and_returns_fp32():
    torch.manual_seed(0)
    query, key, value = torch.randn(1, 14, 40, 64), torch.randn(1, 2, 40, 64), torch.randn(1, 2, 40, 64)
    module = _Module()
    module.num_key_value_groups = 7
    setattr(module, decoding.PREFILL_DTYPE, torch.bfloat16)
    with torch.no_grad():
        out, _ = decoding.packed_sdpa_attention(module, query, key, value, None, scaling=0.125)
    assert out.dtype == torch.float32 and out.shape == (1, 40, 14, 64) and out.is_contiguous()
    in_bf16 = reference(query.bfloat16().float(), key.bfloat16().float(), value.bfloat16().float(), 0.125)
    torch.testing.assert_close(out, in_bf16, rtol=0, atol=0.02)  # bf16 rounding of the softmax and the output
    assert not torch.allclose(out, reference(query, key, value, 0.125), rtol=0, atol=1e-4)  # it did round
