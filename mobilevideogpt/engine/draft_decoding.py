"""Greedy decoding that checks a draft: several proposed tokens verified in one forward pass (prompt lookup
decoding, Saxena 2023, with a given token list as the lookup source instead of the prompt).

Live windows overlap, and the answer to a window often repeats, or partly repeats, the answer to the one before
("squats - Keep your back straight" twice, or with another exercise name in front). Each greedy decode step reads
all of the language model's weights to produce one token; a step that feeds the last token plus up to
`MAX_PROPOSED` tokens of the draft reads them once too (the decode kernel multiplies up to `linear_cpu.MAX_ROWS`
rows per pass over the weights) and yields every proposed token the model itself would have picked, plus the one
after. The proposal continues the longest tail of the answer so far (up to 3 tokens) found in the draft.

The tokens are the greedy tokens of `generate`: each row's next token is the argmax of its own logits, with
`min_new_tokens` applied as transformers applies it, and the first proposed token that differs ends the step, its
keys and values dropped from the cache. The rows' products, norms and rotary embeddings are computed row by row as
in a one-token step; only their attention over the cache runs as one masked call instead of a one-query call (the
same values up to summation order, as with a cached prompt prefix).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from . import linear_cpu

MAX_PROPOSED = linear_cpu.MAX_ROWS - 1  # the last token plus these: one pass of the decode kernel over the weights
LONGEST_TAIL = 3  # tokens of the answer so far looked up in the draft


@dataclass
class DraftDecoded:
    tokens: list[int]  # the new tokens, the last one a stop token unless max_new_tokens ended the answer
    accepted: int  # of them, draft tokens confirmed by a verification step
    forward_passes: int  # of the language model, the prompt's included


def propose(draft: Sequence[int], answer: Sequence[int], count: int) -> list[int]:
    """Up to `count` draft tokens that follow the longest tail of `answer` (at most LONGEST_TAIL tokens) found in
    `draft`; of several places the one nearest to where the tail ends in `answer`. [] when no tail is found."""
    if count <= 0 or not draft:
        return []
    for size in range(min(LONGEST_TAIL, len(answer)), 0, -1):
        tail = list(answer[-size:])
        starts = [s for s in range(len(draft) - size) if list(draft[s : s + size]) == tail]
        if starts:
            start = min(starts, key=lambda s: abs(s - (len(answer) - size)))
            return list(draft[start + size : start + size + count])
    return []


def greedy_decode(
    model,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor,
    cache,
    *,
    draft: Sequence[int],
    max_new_tokens: int,
    min_new_tokens: int,
    stop_ids: Sequence[int],
    on_token: Callable[[int], None],
) -> DraftDecoded:
    """Greedy tokens after a prompt of one sequence (`inputs_embeds` (1, L, H), `attention_mask` (1, L) of ones;
    `cache` may hold a prefix of it), `draft` tokens checked on the way. `on_token` gets each token as it is known.
    Afterwards the cache holds the prompt and every new token but the last, as after `generate`."""
    if inputs_embeds.shape[0] != 1:
        raise ValueError(f"draft decoding takes one sequence, got a batch of {inputs_embeds.shape[0]}")
    stops = torch.tensor(sorted(set(stop_ids)), dtype=torch.long)
    stop_set = set(stop_ids)

    def pick(logits: torch.Tensor, index: int) -> int:
        logits = logits.float()
        if index < min_new_tokens and stops.numel():
            logits = logits.clone()
            logits[stops.to(logits.device)] = float("-inf")
        return int(logits.argmax())

    past = cache.get_seq_length()
    out = model(
        inputs_embeds=inputs_embeds[:, past:], attention_mask=attention_mask, cache=cache, use_cache=True,
        logits_to_keep=1,
    )
    tokens = [pick(out.logits[0, -1], 0)]
    on_token(tokens[-1])
    accepted, passes = 0, 1
    while len(tokens) < max_new_tokens and tokens[-1] not in stop_set:
        proposed = propose(draft, tokens, min(MAX_PROPOSED, max_new_tokens - len(tokens) - 1))
        fed = [tokens[-1], *proposed]
        ids = torch.tensor([fed], dtype=torch.long, device=inputs_embeds.device)
        mask = attention_mask.new_ones(1, cache.get_seq_length() + len(fed))
        logits = model(
            input_ids=ids, attention_mask=mask, cache=cache, use_cache=True, logits_to_keep=1 if len(fed) == 1 else 0
        ).logits
        passes += 1
        for row in range(len(fed)):
            token = pick(logits[0, row - len(fed)], len(tokens))
            tokens.append(token)
            on_token(token)
            confirmed = row < len(proposed) and proposed[row] == token
            accepted += confirmed
            if not confirmed or token in stop_set or len(tokens) >= max_new_tokens:
                break
        unused = len(fed) - (row + 1)
        if unused:
            cache.crop(-unused)  # the rows after the first mismatch attended to tokens that were not picked
    return DraftDecoded(tokens, accepted, passes)
