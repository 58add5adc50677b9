"""Decode steps: the growing KV cache and packed grouped-query attention give the stock results."""

from __future__ import annotations

import copy

import torch
from transformers import DynamicCache, Qwen2Config, Qwen2ForCausalLM
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from mobilevideogpt.engine.decoding import (
    ATTENTION,
    PREFILL_DTYPE,
    GrowingLayer,
    new_cache,
    packed_sdpa_attention,
    use_packed_attention,
)
from mobilevideogpt.runtime import cpu_features


def small_qwen2() -> Qwen2ForCausalLM:
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=8,
        num_key_value_heads=2, max_position_embeddings=1024,
    )  # fmt: skip
    config._attn_implementation = "sdpa"
    return Qwen2ForCausalLM(config).eval()


def test_growing_layer_appends_in_place_and_crops_without_copying():
    layer = GrowingLayer()
    k, v = torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4)
    keys, values = layer.update(k, v)
    assert torch.equal(keys, k) and torch.equal(values, v) and layer.get_seq_length() == 5
    buffer = layer._keys.data_ptr()
    step = torch.randn(1, 2, 1, 4)
    keys, _ = layer.update(step, step)
    assert layer._keys.data_ptr() == buffer  # room to spare: no new buffer, no copy of the cache
    assert torch.equal(keys, torch.cat([k, step], dim=2))
    layer.crop(-1)
    assert layer.get_seq_length() == 5 and torch.equal(layer.keys, k)
    long = torch.randn(1, 2, 400, 4)  # beyond the capacity: the buffer grows and keeps what it held
    keys, _ = layer.update(long, long)
    assert torch.equal(keys, torch.cat([k, long], dim=2)) and layer.get_seq_length() == 405


def test_generation_equals_the_stock_path():
    model = small_qwen2()
    fast = copy.deepcopy(model)
    use_packed_attention(fast)
    assert fast.config._attn_implementation == ATTENTION
    ids = torch.randint(0, 300, (1, 90), generator=torch.Generator().manual_seed(1))
    settings = {"max_new_tokens": 20, "min_new_tokens": 20, "do_sample": False, "pad_token_id": 0}
    stock = model.generate(ids, cache=DynamicCache(config=model.config), **settings)
    cache = new_cache(fast.config)
    assert all(isinstance(layer, GrowingLayer) for layer in cache.layers)
    ours = fast.generate(ids, cache=cache, **settings)
    assert torch.equal(stock, ours)

    # Cut back to a prefix of the prompt and continue from there: the same as generating from the prompt afresh.
    cache.crop(ids.shape[1] - 10 - cache.get_seq_length())
    again = fast.generate(ids, cache=cache, **settings)
    assert torch.equal(again, stock)


class Module:
    """What the attention functions read of an attention module: 8 query heads over 2 key/value heads."""

    num_key_value_groups = 4
    is_causal = True


def test_packed_attention_equals_sdpa_for_one_query():
    query = torch.randn(1, 8, 1, 16)
    key, value = torch.randn(1, 2, 33, 16), torch.randn(1, 2, 33, 16)
    packed, _ = packed_sdpa_attention(Module(), query, key, value, None, scaling=0.25)
    stock, _ = sdpa_attention_forward(Module(), query, key, value, None, scaling=0.25)
    assert packed.shape == stock.shape == (1, 1, 8, 16)
    torch.testing.assert_close(packed, stock, rtol=1e-5, atol=1e-6)
    # Several queries (a prefill) go to transformers' own function unchanged.
    many = torch.randn(1, 8, 5, 16)
    torch.testing.assert_close(
        packed_sdpa_attention(Module(), many, key, value, None, scaling=0.25)[0],
        sdpa_attention_forward(Module(), many, key, value, None, scaling=0.25)[0],
    )


def test_packed_attention_equals_sdpa_for_a_few_masked_queries():
    # A verification step: 3 new queries at positions 30-32 of 33, batch 2, the second sequence's first key padded.
    query = torch.randn(2, 8, 3, 16)
    key, value = torch.randn(2, 2, 33, 16), torch.randn(2, 2, 33, 16)
    mask = torch.ones(2, 1, 3, 33, dtype=torch.bool).tril(30)
    mask[1, :, :, 0] = False
    for m in (mask, torch.zeros(mask.shape).masked_fill(~mask, float("-inf"))):
        packed, _ = packed_sdpa_attention(Module(), query, key, value, m, scaling=0.25)
        stock, _ = sdpa_attention_forward(Module(), query, key, value, m, scaling=0.25)
        assert packed.shape == stock.shape == (2, 3, 8, 16)
        torch.testing.assert_close(packed, stock, rtol=1e-5, atol=1e-6)


def test_a_bf16_prefill_dtype_makes_the_first_prefill_attend_in_bf16():
    model = small_qwen2()
    fast = copy.deepcopy(model)
    use_packed_attention(fast, torch.bfloat16)
    ids = torch.randint(0, 300, (1, 90), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        stock, ours = model(ids).logits, fast(ids).logits
    assert ours.dtype == torch.float32
    if not cpu_features().bf16_attention:  # torch's bf16 attention would raise here: it stays at fp32
        assert not any(hasattr(layer.self_attn, PREFILL_DTYPE) for layer in fast.model.layers)
        torch.testing.assert_close(ours, stock)
        return
    assert all(getattr(layer.self_attn, PREFILL_DTYPE) == torch.bfloat16 for layer in fast.model.layers)
    assert not torch.equal(stock, ours)  # the attention rounded to bf16 ...
    torch.testing.assert_close(ours, stock, rtol=0, atol=0.02)  # ... and nothing else changed
