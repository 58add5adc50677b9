"""The language model's last decoder layer, computed for the last position only when nothing else is used.

A generation prefill (transformers' `generate` passes `logits_to_keep=1`) needs the logits of the last position
only, and the last decoder layer's output reaches nothing but the final norm and the LM head. Of that layer, every
position's keys and values are still needed (they go into the KV cache, read by the decode steps and by follow-up
questions), but the query projection, attention, output projection, second norm and MLP only matter for the last
position: for a ~2450-token prompt, skipping them saves about 1/24 of the prefill. The result is the same up to
rounding (one-row products may take other kernels).

`LastPositionDecoderLayer` takes over a `Qwen2DecoderLayer`'s modules (same attribute names, so the same state-dict
keys, PEFT targets and `modules()` traversal) and is still a `Qwen2DecoderLayer` (gradient checkpointing and
transformers' output capture find it). It prunes only inside `last_position_only()`, which the causal LM's forward
enters when the caller needs just the last position's output; otherwise it runs the stock forward.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

import torch
from transformers.cache_utils import Cache
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer, apply_rotary_pos_emb, eager_attention_forward

# Context variables, not attributes: a setting made for one forward cannot leak into another call or thread.
_ACTIVE: ContextVar[bool] = ContextVar("mvgpt_last_position_only", default=False)
_ALLOWED: ContextVar[bool] = ContextVar("mvgpt_last_position_allowed", default=True)


@contextlib.contextmanager
def last_position_only(active: bool = True) -> Iterator[None]:
    """Inside the block, `LastPositionDecoderLayer`s return the last position's output only (when `active` and
    pruning is allowed, see `all_positions`)."""
    token = _ACTIVE.set(active and _ALLOWED.get())
    try:
        yield
    finally:
        _ACTIVE.reset(token)


@contextlib.contextmanager
def all_positions() -> Iterator[None]:
    """Inside the block, no layer prunes: every forward computes every position (to compare against, or time)."""
    token = _ALLOWED.set(False)
    try:
        yield
    finally:
        _ALLOWED.reset(token)


def _row_sliceable(attention_mask) -> bool:
    """A mask whose last query row can be cut out: none, or a (B, 1 or heads, Q, K) tensor."""
    return attention_mask is None or (isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 4)


class LastPositionDecoderLayer(Qwen2DecoderLayer):
    """A `Qwen2DecoderLayer` that, inside `last_position_only()`, caches every position's keys and values but
    computes the rest of the layer for the last position only, returning (B, 1, hidden)."""

    def __init__(self, layer: Qwen2DecoderLayer) -> None:
        # Skip Qwen2DecoderLayer.__init__: it would build new weights. The modules are `layer`'s own, under the same
        # names, and are looked up at each call (packing and PEFT may replace them after construction).
        super(Qwen2DecoderLayer, self).__init__()
        # Plain attributes too (`hidden_size`, and whatever else a transformers version sets), not nn.Module's own.
        self.__dict__.update({k: v for k, v in vars(layer).items() if k not in vars(self)})
        for name, child in layer.named_children():
            self.add_module(name, child)
        self.train(layer.training)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = False,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        **kwargs,
    ) -> torch.Tensor:
        attention = self.self_attn
        prune = (
            _ACTIVE.get()
            and hidden_states.shape[1] > 1
            and position_embeddings is not None
            and getattr(attention, "sliding_window", None) is None  # a window would need its own mask row
            and _row_sliceable(attention_mask)
        )
        if not prune:
            return super().forward(
                hidden_states, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
                use_cache=use_cache, position_embeddings=position_embeddings, **kwargs,
            )  # fmt: skip
        # What Qwen2DecoderLayer passes its attention on top of the named arguments.
        attention_kwargs = {"position_ids": position_ids, "use_cache": use_cache, **kwargs}
        residual = hidden_states[:, -1:]
        hidden_states = self.input_layernorm(hidden_states)
        last = hidden_states[:, -1:]
        head_dim = attention.head_dim
        query = attention.q_proj(last).view(*last.shape[:-1], -1, head_dim).transpose(1, 2)
        keys = attention.k_proj(hidden_states).view(*hidden_states.shape[:-1], -1, head_dim).transpose(1, 2)
        values = attention.v_proj(hidden_states).view(*hidden_states.shape[:-1], -1, head_dim).transpose(1, 2)

        cos, sin = position_embeddings
        # The query and the keys need different positions' rotations: two calls, each discarding its second result.
        query, _ = apply_rotary_pos_emb(query, query, cos[:, -1:], sin[:, -1:])
        keys, _ = apply_rotary_pos_emb(keys, keys, cos, sin)
        if cache is not None:
            keys, values = cache.update(keys, values, attention.layer_idx, kwargs=attention_kwargs)

        implementation = attention.config._attn_implementation
        interface = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)
        # One query, so the call looks like a decode step's: its mask row and position. Without a mask the one query
        # sees every key, which is right for the last position.
        if attention_mask is not None:
            attention_mask = attention_mask[..., -1:, :]
        step_kwargs = {**attention_kwargs, "position_ids": None if position_ids is None else position_ids[..., -1:]}
        output, _ = interface(
            attention, query, keys, values, attention_mask,
            dropout=0.0 if not attention.training else attention.attention_dropout,
            scaling=attention.scaling, sliding_window=attention.sliding_window, **step_kwargs,
        )  # fmt: skip
        output = attention.o_proj(output.reshape(*last.shape[:-1], -1).contiguous())
        hidden_states = residual + output

        residual = hidden_states
        hidden_states = self.mlp(self.post_attention_layernorm(hidden_states))
        return residual + hidden_states
