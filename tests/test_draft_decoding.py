"""Greedy decoding that checks a draft gives `generate`'s greedy tokens, with fewer forward passes when the draft
is right."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from mobilevideogpt.engine.decoding import new_cache, use_packed_attention
from mobilevideogpt.engine.draft_decoding import MAX_PROPOSED, greedy_decode, propose

STOP = 7


def small_qwen2() -> Qwen2ForCausalLM:
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, attn_implementation="sdpa",
    )  # fmt: skip
    model = Qwen2ForCausalLM(config).eval()
    use_packed_attention(model)
    return model


def stock_greedy(model, embeds: torch.Tensor, max_new: int, min_new: int) -> list[int]:
    mask = torch.ones(1, embeds.shape[1], dtype=torch.long)
    out = model.generate(
        inputs_embeds=embeds, attention_mask=mask, cache=new_cache(model.config), max_new_tokens=max_new,
        min_new_tokens=min_new, do_sample=False, eos_token_id=[STOP], pad_token_id=0,
    )  # fmt: skip
    return out[0].tolist()


def drafted(model, embeds: torch.Tensor, draft, max_new: int, min_new: int, cache=None):
    cache = cache if cache is not None else new_cache(model.config)
    seen = []
    result = greedy_decode(
        model, embeds, torch.ones(1, embeds.shape[1], dtype=torch.long), cache, draft=draft,
        max_new_tokens=max_new, min_new_tokens=min_new, stop_ids=[STOP], on_token=seen.append,
    )  # fmt: skip
    assert seen == result.tokens  # every token reported as it is known, in order
    return result, cache


def test_propose_continues_the_longest_tail_found_in_the_draft():
    draft = [5, 9, 4, 11, 12, 13, 4, 20]
    assert propose(draft, [5], 3) == [9, 4, 11]
    assert propose(draft, [9, 4], 2) == [11, 12]  # the 2-token tail, not the later lone 4
    assert propose(draft, [4], 2) == [11, 12]  # a lone 4: the occurrence nearest the answer's position
    assert propose(draft, [1, 1, 1, 1, 1, 1, 4], 5) == [20]  # ... which here is the later one
    assert propose(draft, [30, 13], 3) == [4, 20]
    assert propose(draft, [30], 3) == [] and propose([], [5], 3) == [] and propose(draft, [5], 0) == []
    assert propose(draft, [20], 3) == []  # nothing follows the draft's end


@pytest.mark.parametrize("max_new, min_new", [(24, 24), (24, 0), (2, 0), (1, 1)])
def test_greedy_decode_gives_the_stock_greedy_tokens_whatever_the_draft(max_new, min_new):
    model = small_qwen2()
    with torch.no_grad():
        for seed in range(3):
            embeds = torch.randn(1, 40, 64, generator=torch.Generator().manual_seed(seed)) * 0.5
            stock = stock_greedy(model, embeds, max_new, min_new)
            drafts = {
                "none": [], "exact": stock, "shifted": stock[3:] + stock[:3], "noise": [1, 2, 3, 4, 5, 6],
                "half": stock[: len(stock) // 2] + [0] * 5,
            }  # fmt: skip
            for name, draft in drafts.items():
                result, cache = drafted(model, embeds, draft, max_new, min_new)
                assert result.tokens == stock, (seed, name)
                # As after generate: the prompt and every new token but the last are in the cache.
                assert cache.get_seq_length() == embeds.shape[1] + len(stock) - 1, (seed, name)
            exact, _ = drafted(model, embeds, stock, max_new, min_new)
            # Every token after the prompt's is a confirmed draft token or the one after a step's last confirmed one.
            assert exact.accepted >= (len(stock) - 1) - (exact.forward_passes - 1)
            assert exact.forward_passes == 1 + math.ceil((len(stock) - 1) / (MAX_PROPOSED + 1))
            assert drafted(model, embeds, [], max_new, min_new)[0].forward_passes == len(stock)


def test_min_new_tokens_and_stop_tokens_are_applied_per_verified_row():
    model = small_qwen2()
    with torch.no_grad():
        model.lm_head.weight[STOP] += 0.4 * model.lm_head.weight[STOP].sign()  # the stop token comes early
        embeds = torch.randn(1, 30, 64, generator=torch.Generator().manual_seed(3)) * 0.5
        free = stock_greedy(model, embeds, 30, 0)
        assert free[-1] == STOP and len(free) < 30, "the test needs an answer that stops by itself"
        for min_new in (0, len(free), len(free) + 3):
            stock = stock_greedy(model, embeds, 30, min_new)
            for draft in ([], free, stock, free + free):
                result, _ = drafted(model, embeds, draft, 30, min_new)
                assert result.tokens == stock, (min_new, draft)
        assert STOP not in stock_greedy(model, embeds, 30, len(free) + 3)[: len(free) + 3]


def test_a_cached_prefix_is_continued_as_generate_continues_it():
    model = small_qwen2()
    with torch.no_grad():
        embeds = torch.randn(1, 48, 64, generator=torch.Generator().manual_seed(5)) * 0.5
        stock = stock_greedy(model, embeds, 16, 16)
        cache = new_cache(model.config)
        model(inputs_embeds=embeds[:, :30], cache=cache, use_cache=True)  # a kept prefix (30 of 48 positions)
        result, cache = drafted(model, embeds, stock, 16, 16, cache=cache)
        assert result.tokens == stock and cache.get_seq_length() == 48 + 15


def test_a_batch_is_refused():
    model = small_qwen2()
    with pytest.raises(ValueError, match="one sequence"):
        drafted(model, torch.zeros(2, 5, 64), [], 4, 0)
