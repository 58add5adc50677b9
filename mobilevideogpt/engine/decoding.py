"""Decode steps without per-token copies of the KV cache, and grouped-query attention packed for one query.

A Mobile-VideoGPT prompt is ~2.45 k tokens, so each decode step attends over a long cache. Two costs of the stock
transformers path grow with it, measured on 2 shared cores (full-size Qwen2.5-0.5B, 2462 cached tokens, 1 thread):

- `DynamicLayer.update` concatenates: every step copies the whole cache (24 layers × keys and values, ~60 MB in fp32),
  ~14 % of a step. `GrowingLayer` writes the new token into a buffer with room to spare and returns views.
- With no attention mask (batch 1), transformers' SDPA path passes `enable_gqa=True`, and torch's CPU kernel then
  runs each of the 14 query heads over the 2 key/value heads separately: 33/25 ms for 24 layers vs 17.5/17 ms when
  the 7 query heads that share a key/value head are stacked as 7 queries of one head (the "packed" layout that
  transformers itself uses when a mask is present). `ATTENTION` names that implementation.

A prompt's first prefill (no cached prefix, no mask) on the CPU attends in the dtype of the prefill's products: in
bf16 where those run in bf16 (torch's SDPA; 24 ms a layer against 62 at fp32 on 2 cores of a Xeon with AMX), at fp32
by the compiled causal attention where it is the fastest (`attention_cpu`: flash attention with the grouped heads
packed, written in the layout the output projection reads; at 2500 positions, 14 query and 2 key/value heads, 87 ms
a layer against SDPA's 97 on 2 cores of an AVX2 EPYC).

`new_cache(config)` builds the cache; `use_packed_attention(model)` switches a model to the attention function.
Both give the same results as the stock path (up to summation order; a bf16 prefill dtype rounds the first
prefill's attention to bf16).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, DynamicCache
from transformers.cache_utils import DynamicLayer
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from ..runtime import cpu_features
from . import attention_cpu

ATTENTION = "mvgpt_sdpa"
PREFILL_DTYPE = "prefill_attention_dtype"  # set on a decoder layer's attention by `use_packed_attention`
GROWTH = 1.25  # buffer capacity over the length it must hold (plus HEADROOM): growth is rare and cheap
HEADROOM = 64
FEW_QUERIES = 8  # queries per step up to which grouped heads are packed under a mask (draft verification steps)


class GrowingLayer(DynamicLayer):
    """A `DynamicLayer` whose keys and values live in buffers with spare room along the sequence: appending writes in
    place, and `keys` / `values` are views of the filled part. `crop` only moves the end, so a cached prompt prefix
    can be kept and the tokens after it dropped without copying."""

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        self._keys = self._values = None
        self._length = 0

    def _reserve(self, key_states: torch.Tensor, value_states: torch.Tensor, length: int) -> None:
        if self._keys is not None and length <= self._keys.shape[-2]:
            return
        capacity = int(length * GROWTH) + HEADROOM
        keys = key_states.new_empty(*key_states.shape[:-2], capacity, key_states.shape[-1])
        values = value_states.new_empty(*value_states.shape[:-2], capacity, value_states.shape[-1])
        if self._length:
            keys[..., : self._length, :] = self._keys[..., : self._length, :]
            values[..., : self._length, :] = self._values[..., : self._length, :]
        self._keys, self._values = keys, values

    def _expose(self) -> None:
        self.keys = self._keys[..., : self._length, :]
        self.values = self._values[..., : self._length, :]

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self._length + key_states.shape[-2]
        self._reserve(key_states, value_states, end)
        self._keys[..., self._length : end, :] = key_states
        self._values[..., self._length : end, :] = value_states
        self._length = end
        self._expose()
        return self.keys, self.values

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError(f"crop takes a negative number of tokens to remove, got {tokens_to_remove}")
        if not self.is_initialized or tokens_to_remove == 0:
            return
        self._length = max(0, self._length + tokens_to_remove)
        self._expose()

    def reset(self) -> None:
        self._keys = self._values = None
        self._length = 0
        super().reset()

    def _adopt(self) -> None:
        """After an operation that replaced `keys` / `values` (beam reordering, batch selection): own copies."""
        if self.is_initialized and self.keys is not None and self.keys.numel():
            self._keys, self._values = self.keys.contiguous(), self.values.contiguous()
            self._length = self._keys.shape[-2]
            self._expose()

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        super().reorder_cache(beam_idx)
        self._adopt()

    def batch_repeat_interleave(self, repeats: int) -> None:
        super().batch_repeat_interleave(repeats)
        self._adopt()

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        super().batch_select_indices(indices)
        self._adopt()


def new_cache(config) -> DynamicCache:
    """A `DynamicCache` for `config` whose full-attention layers are `GrowingLayer`s (sliding-window layers, if the
    config has any, keep transformers' own class)."""
    cache = DynamicCache(config=config)
    cache.layers = [GrowingLayer() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


def packed_sdpa_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """transformers' SDPA attention, except that one unmasked query with grouped key/value heads runs packed, and a
    CPU prompt's causal self-attention (no cached prefix, no mask, no gradient) runs in the dtype of the prefill's
    products (`use_packed_attention`), at fp32 by the compiled kernel (`attention_cpu`) where it is the fastest."""
    if _first_prefill(module, query, key, attention_mask, dropout, kwargs):
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        dtype = getattr(module, PREFILL_DTYPE, query.dtype)
        if dtype != query.dtype:
            return _causal_sdpa(query, key, value, scale, dtype), None
        if compiled_attention_fastest() and attention_cpu.takes(query, key, value) and attention_cpu.load_kernel():
            return attention_cpu.causal_attention(query, key, value, scale), None
    groups = getattr(module, "num_key_value_groups", 1)
    if query.shape[2] == 1 and attention_mask is None and groups > 1 and not kwargs.get("output_attentions"):
        return _grouped_heads_packed(query, key, value, None, groups, dropout, scaling), None
    if _few_masked_queries(query, attention_mask, groups, dropout, kwargs):
        # A draft's verification step, each row under its position's mask row, instead of transformers' copy of the
        # keys and values for every query head (at 2.4 k cached positions that copy and its attention took a 4-query
        # step from 83 to 162 ms, a 1-query step's twice).
        return _grouped_heads_packed(query, key, value, attention_mask, groups, dropout, scaling), None
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)


def _grouped_heads_packed(query, key, value, mask, groups: int, dropout, scaling) -> torch.Tensor:
    """SDPA with the query heads that share a key/value head stacked as the rows of one head (query head h uses
    key/value head h // groups; row g * queries + i is head g's query i, under mask row i) → (B, queries, Hq, D)."""
    batch, heads, queries, dim = query.shape
    packed = query.reshape(batch, heads // groups, groups * queries, dim)
    if mask is not None:
        mask = mask[:, :, :, : key.shape[-2]].repeat(1, 1, groups, 1)
    out = F.scaled_dot_product_attention(packed, key, value, attn_mask=mask, dropout_p=dropout, scale=scaling)
    return out.reshape(batch, heads, queries, dim).transpose(1, 2)


def _few_masked_queries(query, attention_mask, groups: int, dropout, kwargs) -> bool:
    """A few queries (up to FEW_QUERIES) against grouped key/value heads under a 4-D mask, no dropout."""
    return (
        1 < query.shape[2] <= FEW_QUERIES
        and groups > 1
        and attention_mask is not None
        and attention_mask.dim() == 4
        and attention_mask.shape[1] == 1
        and not dropout
        and not kwargs.get("output_attentions")
    )


def _first_prefill(module, query, key, attention_mask, dropout, kwargs) -> bool:
    """A causal self-attention over a whole prompt on the CPU: several queries at the keys' positions (no cached
    prefix), no mask (transformers passes none for an unpadded causal prompt), no gradient."""
    return (
        query.device.type == "cpu"
        and query.shape[2] > 1
        and query.shape[2] == key.shape[2]
        and attention_mask is None
        and getattr(module, "is_causal", True)
        and not dropout
        and kwargs.get("sliding_window") is None
        and not kwargs.get("output_attentions")
        and not torch.is_grad_enabled()
    )


def compiled_attention_fastest() -> bool:
    """Whether the compiled kernel (8-lane AVX2 code) beats torch's SDPA at fp32 here: where torch runs AVX2 too.
    Per layer at ~2.45 k positions, 14 query and 2 key/value heads, on 2 cores: 87 against SDPA's 97 ms on an AVX2
    EPYC; on a Xeon with AVX512 (and AMX), SDPA 62 against the kernel's 85 ms."""
    return cpu_features().isa == "AVX2"


def _causal_sdpa(query, key, value, scale: float, dtype: torch.dtype) -> torch.Tensor:
    """torch's causal SDPA computed in `dtype` → (B, T, Hq, D) in query's dtype, the layout the output projection
    reads. In bf16 on a Xeon with AMX (2432 positions, 2 cores): 24 ms a layer with the casts, 62 ms at fp32."""
    groups = query.shape[1] // key.shape[1]
    out = F.scaled_dot_product_attention(
        query.to(dtype), key.to(dtype), value.to(dtype), is_causal=True, scale=scale, enable_gqa=groups > 1
    )
    return out.transpose(1, 2).to(query.dtype, memory_format=torch.contiguous_format)


AttentionInterface.register(ATTENTION, packed_sdpa_attention)
AttentionMaskInterface.register(ATTENTION, sdpa_mask)


def use_packed_attention(model, prefill_dtype: torch.dtype | None = None) -> None:
    """Switch a transformers model that uses SDPA attention to `packed_sdpa_attention` (other choices are kept).
    With `prefill_dtype` a prompt's first prefill attends in that dtype (its products' dtype, e.g. bf16 on CPUs with
    bf16 matrix units, while the hidden states stay fp32), where torch's attention runs in it
    (`CpuFeatures.bf16_attention`; else at the hidden states' dtype)."""
    if model.config._attn_implementation != "sdpa":
        return
    model.set_attn_implementation(ATTENTION)
    if prefill_dtype == torch.bfloat16 and not cpu_features().bf16_attention:
        prefill_dtype = None
    if prefill_dtype is not None:
        for layer in model.model.layers:
            setattr(layer.self_attn, PREFILL_DTYPE, prefill_dtype)
